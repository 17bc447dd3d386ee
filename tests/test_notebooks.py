"""Notebooks are stored clean and follow the conventions nbval and Colab need.

nbval itself executes every notebook (pytest collects book/ and labs/ with --nbval-lax).
"""
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("book/*.ipynb")) + sorted(ROOT.glob("labs/*.ipynb"))
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]


def test_there_are_chapters_and_labs():
    assert len(list(ROOT.glob("book/*.ipynb"))) >= 4 and len(list(ROOT.glob("labs/*.ipynb"))) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_installs_only_in_colab(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules:' in first.source
    assert "pip" in first.source and "remove-cell" in first.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_safe_for_nbval_and_the_grader(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert "from tqdm import tqdm" not in cell.source, f"{path.name} cell {i}: use tqdm.auto"
        magics = [ln for ln in cell.source.splitlines() if ln.lstrip().startswith(("!", "%"))]
        assert not magics, f"{path.name} cell {i}: IPython magics {magics} break plain-Python grading"


@pytest.mark.parametrize("path", sorted(ROOT.glob("labs/*.ipynb")), ids=lambda p: p.name)
def test_labs_name_their_checks(path):
    nb = nbformat.read(path, as_version=4)
    lab = nb.metadata["fmlab"]["lab"]
    assert (ROOT / "labs" / "checks" / f"{lab}.py").is_file()
    assert (ROOT / "labs" / "hidden" / f"{lab}.py").is_file()
    assert any("# BEGIN SOLUTION" in c.source for c in nb.cells)
