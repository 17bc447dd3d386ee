"""Notebooks are stored clean and follow the conventions nbval, Colab and the website need.

nbval itself executes every chapter (pytest collects book/ with --nbval-lax); the master labs
run in tests/test_colab.py, in Colab's bare install, with their checks required to pass;
labs/student/ holds the generated student versions, checked here and never executed.
"""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import course_home  # noqa: E402

NOTEBOOKS = sorted(ROOT.glob("book/*.ipynb")) + sorted(ROOT.glob("labs/*.ipynb"))
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]
STUDENTS = sorted(ROOT.glob("labs/student/*.ipynb"))
WIDTH = 88  # the website shows this many columns of code before it cuts a line off


def test_there_are_chapters_and_labs():
    assert len(list(ROOT.glob("book/*.ipynb"))) >= 4 and len(list(ROOT.glob("labs/*.ipynb"))) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS + STUDENTS,
                         ids=IDS + [str(p.relative_to(ROOT)) for p in STUDENTS])
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS + STUDENTS,
                         ids=IDS + [str(p.relative_to(ROOT)) for p in STUDENTS])
def test_first_code_cell_is_the_install_cell_of_config_yml(path):
    """The first code cell installs fmlab from _config.yml's repository, only inside Colab."""
    nb = nbformat.read(path, as_version=4)
    first = course_home.first_code_cell(nb)
    assert first is not None, f"{path.name} has no code cell"
    assert 'if "google.colab" in sys.modules:' in first.source
    assert "remove-cell" in first.metadata.get("tags", []), f"{path.name}: tag it remove-cell"
    assert first.source == course_home.install_cell(), (
        f"{path.name}: the install cell does not install {course_home.install_url()} "
        "(repository: in _config.yml); run `make sync-install-cells`")


def test_install_url_comes_from_config_yml():
    url, branch = course_home.home()
    assert url.startswith("https://github.com/"), "Colab's launch button needs a GitHub URL"
    assert course_home.install_url() == f"git+{url}@{branch}"
    assert not course_home.disagreements(), course_home.disagreements()


def test_the_check_catches_a_disagreeing_cell(tmp_path):
    """The install-cell check can fail: a notebook with another URL is named."""
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/a/b\n"
                                          "  branch: dev\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        course_home.install_cell().replace(course_home.install_url(), "git+https://x/y"))])
    nbformat.write(nb, tmp_path / "book" / "01_x.ipynb")
    assert course_home.disagreements(tmp_path) == [
        "book/01_x.ipynb: the first code cell is not the install cell for "
        "git+https://github.com/a/b@dev"]
    course_home.sync(tmp_path)
    assert course_home.disagreements(tmp_path) == []
    cell = nbformat.read(tmp_path / "book" / "01_x.ipynb", as_version=4).cells[0]
    assert '"git+https://github.com/a/b@dev"' in cell.source


def test_student_notebooks_are_current():
    """labs/student/ is exactly what `fmlab assign labs --out labs/student --no-prove` writes."""
    assert STUDENTS, "no student notebooks in labs/student/; run `make students`"
    problems = course_home.stale_students()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.name)
def test_student_notebooks_hold_no_solution(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_code_fits_the_page(path):
    """Every code line is at most 88 columns: the website cuts longer lines off."""
    nb = nbformat.read(path, as_version=4)
    long = [f"  cell {i}, line {n}: {len(line)} columns: {line.strip()[:60]}"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for n, line in enumerate(cell.source.splitlines(), 1) if len(line) > WIDTH]
    assert not long, (f"{path.relative_to(ROOT)}: {len(long)} code lines longer than {WIDTH} "
                      "columns (cells count from 0, lines from 1):\n" + "\n".join(long))


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
