"""A stand-in for Colab: the notebooks' own install cell installs fmlab into a fresh Python.

What Colab gives a notebook, as far as this machine can reproduce it:

- a fresh virtual environment whose preinstalled packages are only torch, torchvision, numpy
  and the notebook kernel (ipykernel) with their dependencies. They are the project venv's
  own files, exposed through a folder of symlinks named in a .pth file (no 5 GB reinstall of
  torch); everything else fmlab needs, pip installs from the package index;
- a ``google.colab`` module (a stub) that the kernel imports at start, as Colab's does, so the
  install cell's ``if "google.colab" in sys.modules:`` branch runs;
- the install cell's URL pointed at a snapshot of this working tree with ``FMLAB_INSTALL_URL``
  (``git+file://...``), the way Colab installs ``git+https://github.com/...``.

Then a chapter's first cells run, a student lab runs up to its first ``check(...)``, which must
say "not implemented yet" rather than crash, every lab's public checks load (a lab may forbid
a library the bare install lacks), every master lab runs with every check passing, and every
chapter runs to its end in the full profile's smoke size (below). One environment serves them
all. The install cell runs again, as in Colab, and finds fmlab installed, in the student lab's
run; the other runs after it run that same cell (every notebook's first cell is it:
tests/test_notebooks.py) as it runs outside Colab, without pip's repeat of the same no-op
(2-3 s each, 15 notebooks). It needs git and a package index; without
git it is skipped and says why.

The chapters' smoke runs: the full profile, where the full datasets cannot be had, with a token
amount of work. ``FMLAB_PROFILE=full FMLAB_SMOKE=1 FMLAB_DEVICE=cpu`` gives the full profile's
code paths and sizes with each size table's ``"smoke"`` entry laid over them;
``FMLAB_OFFLINE=1`` and an empty ``FMLAB_DATA`` mean that no dataset is cached and none may be
downloaded, so ``fmlab.data.load`` must fall back to the embedded images and every size that
depends on the data must fit them. The chapters are found by glob, so a new one is covered as
soon as it exists. The labs size nothing by profile (tests/test_smoke_profile.py checks that),
so their full-profile run would repeat the quick one above.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import course_home  # noqa: E402
from fmlab.results import quoted  # noqa: E402

PREINSTALLED = ["torch", "torchvision", "numpy", "ipykernel"]
CHAPTER, CHAPTER_CELLS = "book/01_training_cnn.ipynb", 4  # install, imports, data, a check
LAB = "02_losses"
MASTERS = sorted(p.stem for p in (ROOT / "labs").glob("*.ipynb"))
CHAPTERS = sorted(ROOT.glob("book/*.ipynb"))
FALLBACK_NOTICE = "Using the bundled 5,000-image subset"
# The longest notebook here took 134 s in all (chapter 5's smoke run, on 2 cores with avx2
# kernels and a busy process beside it); a cell that has not answered in CELL_TIMEOUT_S has
# stalled (the kernel idle, its reply lost: pyproject.toml's note on ipykernel). The notebook
# then runs once more in a fresh kernel, and says so; a cell that raises fails at once, and a
# second stall fails the test.
CELL_TIMEOUT_S = 240
KERNEL = "colab-standin"
STUB = '"""Stand-in for Colab\'s google.colab: its presence is what notebooks test for."""\n'

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, themselves included (no extras)."""
    seen, todo, dists = set(), list(names), []
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this venv does not have
        dists.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dists


def expose(dists: list[metadata.Distribution], folder: Path) -> None:
    """Symlink each distribution's top-level files and its metadata into ``folder``."""
    folder.mkdir()
    for dist in dists:
        base = Path(dist.locate_file(""))
        # RECORD names the package folders and the .dist-info (so pip sees it installed)
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            if top == "__pycache__" or (folder / top).exists():
                continue
            if (base / top).exists():
                (folder / top).symlink_to(base / top)


def snapshot(dest: Path) -> str:
    """This working tree (tracked and new, non-ignored files) as a one-commit git repository."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "-C", str(dest)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return f"git+file://{dest}"


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A kernel name and the environment of a Colab stand-in, with timings."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: pip cannot install fmlab from a git URL without it")
    tmp = tmp_path_factory.mktemp("colab")
    started = time.perf_counter()
    venv = tmp / "venv"
    # --upgrade-deps: a current pip, as Colab has (pip 23 rejects git+file:/// requirements)
    subprocess.run([sys.executable, "-m", "venv", "--upgrade-deps", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    expose(closure(PREINSTALLED), tmp / "preinstalled")
    (tmp / "stub" / "google" / "colab").mkdir(parents=True)  # google stays a namespace package
    (tmp / "stub" / "google" / "colab" / "__init__.py").write_text(STUB)
    (site / "colab_standin.pth").write_text(f"{tmp / 'preinstalled'}\n{tmp / 'stub'}\n")
    kernel = tmp / "kernels" / KERNEL
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(
        '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}", '
        '"--IPKernelApp.exec_lines=[\'import google.colab\']"], '
        '"display_name": "Colab stand-in", "language": "python"}' % python)
    (tmp / "repo").mkdir()
    (tmp / "content").mkdir()  # the working folder, as Colab's /content: not this checkout
    # PIP_COMPILE=0 (pip install --no-compile): pip leaves byte-compiling to the first import
    # (most files of scipy or torchao are never imported here), which then writes the bytecode
    env = {**os.environ, course_home.INSTALL_ENV: snapshot(tmp / "repo"),
           "FMLAB_PROFILE": "quick", "PYTHONNOUSERSITE": "1", "PIP_COMPILE": "0"}
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    timings = {"venv and snapshot": time.perf_counter() - started}
    yield {"kernels": tmp / "kernels", "env": env, "python": python, "timings": timings,
           "cwd": tmp / "content", "installed": False}
    print("\nColab stand-in timings (s): " + ", ".join(
        f"{k} {v:.1f}" for k, v in timings.items()))


# The install cell as it runs outside Colab (its imports, no pip), in a stand-in that has
# fmlab installed already; google.colab stays imported for the cells after it.
INSTALLED = """import sys
_colab = sys.modules.pop("google.colab")
try:
    exec({source!r})
finally:
    sys.modules["google.colab"] = _colab
del _colab"""


def execute(colab, cells: list, name: str, env: dict | None = None,
            reinstall: bool = True) -> list:
    """Run ``cells`` in the stand-in's kernel (its environment updated with ``env``); return
    them with their outputs. ``reinstall=False``: where fmlab is installed in the stand-in
    already, the first cell, the install cell, runs as outside Colab, without pip."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    install = course_home.install_cell()
    if not reinstall and colab["installed"]:
        assert cells[0].source == install, f"{name}: the first cell is not the install cell"
        cells = [nbformat.v4.new_code_cell(INSTALLED.format(source=install)), *cells[1:]]
    started = time.perf_counter()
    for attempt in (1, 2):
        nb = nbformat.v4.new_notebook(cells=copy.deepcopy(cells))
        ksm = KernelSpecManager(kernel_dirs=[str(colab["kernels"])])
        km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)
        client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                                resources={"metadata": {"path": str(colab["cwd"])}})
        try:
            client.execute(env={**colab["env"], **(env or {})})
            break
        except CellTimeoutError as stall:
            if attempt == 2:
                raise
            print(f"{name}: a cell gave no answer in {CELL_TIMEOUT_S} s "
                  f"({str(stall).splitlines()[0][:120]}); running it once more")
        finally:  # a client handed its manager does not own the kernel: stop it here
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    colab["timings"][name] = time.perf_counter() - started
    colab["installed"] = colab["installed"] or cells[0].source == install
    return nb.cells


def text(cell) -> str:
    return "".join(o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values())
                   for o in cell.get("outputs", []))


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_the_stand_in_has_only_torch_and_the_kernel_preinstalled(colab):
    probe = subprocess.run([str(colab["python"]), "-c",
                            "import importlib.util as u; print([m for m in ('torch', 'numpy', "
                            "'ipykernel', 'fmlab', 'matplotlib', 'sklearn', 'mlxtend') "
                            "if u.find_spec(m)])"],
                           capture_output=True, text=True, env=colab["env"], check=True,
                           cwd=colab["cwd"])
    assert probe.stdout.strip() == "['torch', 'numpy', 'ipykernel']", probe.stdout


def test_a_chapter_installs_fmlab_and_runs_its_first_cells(colab):
    cells = code_cells(ROOT / CHAPTER)[:CHAPTER_CELLS]
    assert cells[0].source == course_home.install_cell()
    cells = execute(colab, cells, "chapter (pip install included)")
    assert "profile: quick" in text(cells[1]), text(cells[1])
    shown = subprocess.run([str(colab["python"]), "-m", "pip", "show", "fmlab", "matplotlib"],
                           capture_output=True, text=True, env=colab["env"], cwd=colab["cwd"])
    assert "Name: fmlab" in shown.stdout and "Name: matplotlib" in shown.stdout, shown.stdout
    assert str(colab["kernels"].parent / "venv") in shown.stdout  # in the stand-in, not ours


def test_a_student_lab_runs_to_its_first_check(colab):
    cells = code_cells(ROOT / "labs" / "student" / f"{LAB}.ipynb")
    first = next(i for i, c in enumerate(cells) if re.search(r"^check\(", c.source, re.M))
    cells = execute(colab, cells[: first + 1], "student lab to its first check")
    out = text(cells[-1])
    assert "not implemented yet" in out and "0/" in out, out


def test_every_labs_checks_load_in_the_bare_install(colab):
    """What ``check()`` and the Classroom workflow load first: each lab's public checks, with
    only fmlab's own dependencies installed (no torchattacks, peft or torch-pruning)."""
    probe = nbformat.v4.new_code_cell(
        "import importlib.util, pkgutil\n"
        "import fmlab.checks\n"
        "from fmlab.grading.spec import load_questions\n"
        "missing = [m for m in ('torchattacks', 'peft', 'torch_pruning')\n"
        "           if importlib.util.find_spec(m) is None]\n"
        "for info in pkgutil.iter_modules(fmlab.checks.__path__):\n"
        "    path = f'{fmlab.checks.__path__[0]}/{info.name}.py'\n"
        "    print(info.name, [q.id for q in load_questions(path)])\n"
        "print('not installed:', missing)")
    cells = execute(colab, [nbformat.v4.new_code_cell(course_home.install_cell()), probe],
                    "every lab's checks", reinstall=False)
    out = text(cells[-1])
    assert "not installed: ['torchattacks', 'peft', 'torch_pruning']" in out, out
    for lab in MASTERS:
        name = lab.split("_", 1)[1]
        assert re.search(rf"^\w*{name[:5]}\w* \['q1'", out, re.M), (lab, out)


@pytest.mark.parametrize("lab", MASTERS)
def test_the_master_lab_passes_its_checks(colab, lab):
    cells = execute(colab, code_cells(ROOT / "labs" / f"{lab}.ipynb"), f"master lab {lab}",
                    reinstall=False)
    reports = [text(c) for c in cells if re.search(r"^check\(", c.source, re.M)]
    assert reports, "the master lab has no check() cell"
    for out in reports:
        passed = re.search(r"(\d+)/(\d+) public tests passed", out)
        assert passed and passed[1] == passed[2] and "FAIL" not in out, out


@pytest.mark.parametrize("path", CHAPTERS, ids=[str(p.relative_to(ROOT)) for p in CHAPTERS])
def test_full_profile_smoke_run_without_the_full_datasets(colab, path, tmp_path):
    empty = tmp_path / "no-datasets-here"
    empty.mkdir()
    # One thread per kernel: the runs are tiny, and torch's default thread pool slows down
    # many times over when other processes share the cores.
    env = {"FMLAB_PROFILE": "full", "FMLAB_SMOKE": "1", "FMLAB_DEVICE": "cpu",
           "FMLAB_OFFLINE": "1", "FMLAB_DATA": str(empty), "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    probe = nbformat.v4.new_code_cell("import json, fmlab.results\n"
                                      "print('recorded:', json.dumps(fmlab.results.recorded()))")
    cells = execute(colab, code_cells(path) + [probe], f"smoke run {path.stem}", env,
                    reinstall=False)
    # (execute raises CellExecutionError, naming the cell, if any cell fails)

    streams = "".join(out.get("text", "") for cell in cells
                      for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    if any('load("mnist"' in cell.source for cell in cells):
        assert FALLBACK_NOTICE in streams, (
            f"{path.name} loads MNIST but the offline fallback notice never appeared")
    # the results page quotes exactly what the chapter records
    line = re.search(r"^recorded: (.*)$", text(cells[-1]), re.M)
    recorded = set(json.loads(line[1]))
    page = {key for name, key in quoted((ROOT / "book" / "results.md").read_text())
            if name == path.name}
    assert not page - recorded, (f"book/results.md quotes keys {path.name} does not record: "
                                 f"{sorted(page - recorded)}")
    assert not recorded - page, (f"{path.name} records numbers book/results.md does not show; "
                                 f"add a row for each: {sorted(recorded - page)}")
