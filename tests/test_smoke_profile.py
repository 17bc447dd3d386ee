"""Every chapter runs to the end in the full profile, where the full datasets cannot be had,
with a token amount of work.

The notebooks run with ``FMLAB_PROFILE=full FMLAB_SMOKE=1 FMLAB_DEVICE=cpu`` (the full
profile's code paths and sizes, each size table's ``"smoke"`` entry laid over them), with
``FMLAB_OFFLINE=1`` and an empty ``FMLAB_DATA`` so that no dataset is cached and none may be
downloaded: ``fmlab.data.load`` must fall back to the embedded images, and every size that
depends on the data must fit them. The notebooks are discovered by glob, so a new chapter is
covered as soon as it exists. The labs size nothing by profile (their checks fix their cases
and read the embedded images), so their full-profile run would repeat their quick one, which
tests/test_colab.py makes in Colab's bare install.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import nbformat
import pytest

import fmlab
from fmlab.results import quoted

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("book/*.ipynb"))


def test_no_lab_sizes_itself_by_profile():
    """What makes the labs' full-profile run a repetition: no master lab reads the profile."""
    for lab in sorted(ROOT.glob("labs/*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(lab, as_version=4).cells
                         if c.cell_type == "code")
        assert "profile(" not in code and "SIZES" not in code, (
            f"{lab.name} sizes itself by profile: run it in "
            "test_full_profile_smoke_run_without_the_full_datasets too")
FALLBACK_NOTICE = "Using the bundled 5,000-image subset"


def size_tables():
    """(module name, SIZES) for every fmlab module that defines a chapter's size table."""
    for info in pkgutil.iter_modules(fmlab.__path__):
        if info.name.startswith("_"):  # __main__ runs the command line
            continue
        module = importlib.import_module(f"fmlab.{info.name}")
        if isinstance(getattr(module, "SIZES", None), dict):
            yield info.name, module.SIZES


@pytest.mark.parametrize("name, sizes", list(size_tables()), ids=lambda v: str(v)[:20])
def test_every_size_table_has_a_smoke_entry_within_its_profiles(name, sizes):
    assert {"quick", "full", "smoke"} <= set(sizes), (
        f"fmlab.{name}.SIZES needs 'quick', 'full' and 'smoke' entries")
    assert sizes["quick"].keys() == sizes["full"].keys(), name
    extra = set(sizes["smoke"]) - set(sizes["quick"])
    assert not extra, f"fmlab.{name}.SIZES['smoke'] sets keys no profile has: {sorted(extra)}"


# A smoke run's longest cell takes about 30 s on a busy 2-core machine; a cell that has not
# answered in CELL_TIMEOUT_S has stalled (the kernel idle, its reply lost: pyproject.toml's
# note on ipykernel). Such a run is rerun once in a fresh kernel and says so; a cell that
# raises fails at once, and a second stall fails the test.
CELL_TIMEOUT_S = 240


def run_with_one_rerun_on_a_stall(path: Path):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    for attempt in (1, 2):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
            return nb
        except CellTimeoutError as stall:
            if attempt == 2:
                raise
            print(f"{path.name}: a cell gave no answer in {CELL_TIMEOUT_S} s "
                  f"({str(stall).splitlines()[0][:120]}); running the notebook once more")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_full_profile_smoke_run_without_the_full_datasets(path, tmp_path, monkeypatch):
    empty = tmp_path / "no-datasets-here"
    empty.mkdir()
    # One thread per kernel: the runs are tiny, and torch's default thread pool slows down
    # many times over when other processes share the cores.
    for key, value in {"FMLAB_PROFILE": "full", "FMLAB_SMOKE": "1", "FMLAB_DEVICE": "cpu",
                       "FMLAB_OFFLINE": "1", "FMLAB_DATA": str(empty), "MPLBACKEND": "Agg",
                       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    nb = run_with_one_rerun_on_a_stall(path)

    streams = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    if any('load("mnist"' in cell.source for cell in nb.cells if cell.cell_type == "code"):
        assert FALLBACK_NOTICE in streams, (
            f"{path.name} loads MNIST but the offline fallback notice never appeared")
    if path.parent.name == "book":  # the results page quotes exactly what the chapter records
        recorded = {out.get("metadata", {}).get("scrapbook", {}).get("name")
                    for cell in nb.cells if cell.cell_type == "code"
                    for out in cell.get("outputs", [])} - {None}
        page = {key for name, key in quoted((ROOT / "book" / "results.md").read_text())
                if name == path.name}
        assert not page - recorded, (f"book/results.md quotes keys {path.name} does not record: "
                                     f"{sorted(page - recorded)}")
        assert not recorded - page, (f"{path.name} records numbers book/results.md does not "
                                     f"show; add a row for each: {sorted(recorded - page)}")
