import os

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("FMLAB_PROFILE", "quick")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (make test runs two workers on two cores) every process gets one
    # thread: two OpenMP threads per process on shared cores slow torch down 5-18x. Setting the
    # variables here also limits what this worker starts: nbval's notebook kernels and the
    # subprocesses of the tests inherit the environment.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


# The longest files first, so that the two workers finish together (longest-first scheduling):
# `make test` runs them with --dist loadfile --no-loadscope-reorder, which hands out files in
# this order. (xdist's default order puts the files with the most tests first: the longest
# files, which hold few tests, then started last and one worker ran alone for minutes.)
# Each file's seconds in one `make test` on 2 cores beside it (2026-12-06, from a fresh clone);
# where a file has changed since, its seconds alone on the same 2 cores (busy with other work)
# before and after the change. A file not listed runs after these, chapters (book/*.ipynb)
# before the other tests.
HEAVIEST_FIRST = [
    "tests/test_labs.py",  # 272 with 7 labs; alone with 9: 361, 246 since the checks run once
    "tests/test_colab.py",  # 322; alone: 411, 290 without pip's 16 reruns
    "tests/test_grading_boundary.py",  # 156; alone: 154, 87-109 with shorter waits
    "book/01_training_cnn.ipynb",  # 83
    "book/09_language_model.ipynb",  # 77 alone at load 4.5, 35 at load 1.3; 35-42 s of CPU
    "book/06_explanation.ipynb",  # 75
    "book/03_optimizers.ipynb",  # 72
    "book/05_compression.ipynb",  # 62
    "book/07_finetuning.ipynb",  # 61
    "tests/test_browser.py",  # 60 (177 once in the suite)
    "book/04_adversarial.ipynb",  # 53
    "tests/test_grading_bad.py",  # 68; alone: 98, 79 with lower limits and fmlab's main in-process
    "tests/test_grading_parent.py",  # 50
    "book/08_distributed.ipynb",  # 15-29 alone under nbval, 13 s of CPU (2026-12-06)
]


def _weight(nodeid: str) -> int:
    path = nodeid.split("::", 1)[0]
    if path in HEAVIEST_FIRST:
        return HEAVIEST_FIRST.index(path)
    return len(HEAVIEST_FIRST) + (0 if path.startswith("book/") else 1)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _weight(item.nodeid))  # stable: each file keeps its order


@pytest.fixture
def tmp_data_dir(tmp_path, monkeypatch):
    """An empty FMLAB_DATA, so tests never touch the user's cache."""
    monkeypatch.setenv("FMLAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


# A chapter or lab that creeps past its budget (DESIGN.md: 90 s in the quick profile) shows at
# the end of every run: each notebook's execution time under nbval (its cells, setup included)
# and in its full-profile smoke run, summed from pytest's own reports.
NOTEBOOK_BUDGET_S = 90


def _notebook_times(reporter) -> tuple[dict[str, float], dict[str, float]]:
    nbval, smoke = {}, {}
    for reports in reporter.stats.values():
        for r in reports:
            nodeid, duration = getattr(r, "nodeid", ""), getattr(r, "duration", None)
            if duration is None or ".ipynb" not in nodeid:
                continue
            if nodeid.startswith(("book/", "labs/")) and "::" in nodeid:
                path = nodeid.split("::")[0]
                nbval[path] = nbval.get(path, 0.0) + duration
            elif "test_full_profile_smoke_run" in nodeid and "[" in nodeid:
                path = nodeid.split("[", 1)[1].rstrip("]")
                smoke[path] = smoke.get(path, 0.0) + duration
    return nbval, smoke


def pytest_terminal_summary(terminalreporter):
    nbval, smoke = _notebook_times(terminalreporter)
    if not nbval and not smoke:
        return
    write = terminalreporter.write_line
    terminalreporter.section("notebook execution times (s)")
    write(f"{'notebook':40} {'quick (nbval)':>14} {'full, smoke':>12}")
    for path in sorted(set(nbval) | set(smoke)):
        q, s = nbval.get(path), smoke.get(path)
        over = "  over the budget" if q is not None and q > NOTEBOOK_BUDGET_S else ""
        write(f"{path:40} {'—' if q is None else f'{q:.0f}':>14} "
              f"{'—' if s is None else f'{s:.0f}':>12}{over}")
    write(f"budget: {NOTEBOOK_BUDGET_S} s a chapter in the quick profile (DESIGN.md); two "
          "workers share the cores, so these times include waiting for the other")
