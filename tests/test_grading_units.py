"""Unit tests of the grading machinery that need no child process (plus one gradebook run)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmlab.grading.notebook import (NotebookError, code_cells, lab_id, read_notebook,
                                    strip_solutions, student_version)
from fmlab.grading.report import CaseReport, QuestionReport, Report, write_gradebook, write_json_atomic
from fmlab.grading.spec import NotData, to_data

ROOT = Path(__file__).resolve().parents[1]
MASTER = ROOT / "labs" / "01_cnn.ipynb"


def test_strip_solutions_keeps_the_markers_indentation():
    src = "def f(x):\n    y = 1\n    # BEGIN SOLUTION\n    return x + y\n    # END SOLUTION\n"
    out, n = strip_solutions(src)
    assert n == 1 and out == "def f(x):\n    y = 1\n    raise NotImplementedError"
    nested = "class A:\n    def g(self):\n        ### BEGIN SOLUTION\n        pass\n        ### END SOLUTION\n"
    assert strip_solutions(nested)[0].endswith("\n        raise NotImplementedError")


@pytest.mark.parametrize("src, problem", [
    ("# BEGIN SOLUTION\nx = 1\n", "has no END SOLUTION"),
    ("x = 1\n# END SOLUTION\n", "without a BEGIN SOLUTION"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION\n", "inside the region"),
])
def test_unbalanced_markers_are_errors(src, problem):
    with pytest.raises(NotebookError, match=problem):
        strip_solutions(src)


def test_student_version_of_the_cnn_lab():
    nb = read_notebook(MASTER)
    nb["cells"][5]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "secret"}]
    nb["cells"][5]["execution_count"] = 3
    nb["cells"].append({"cell_type": "code", "metadata": {"tags": ["solution"]}, "outputs": [],
                        "execution_count": None, "source": "ANSWER = 42"})
    student = student_version(nb)
    text = json.dumps(student)
    assert "SOLUTION" not in text and "secret" not in text and "ANSWER" not in text
    assert "(h + 2 * p - k) // s + 1" not in text and "total += loss.item()" not in text
    assert lab_id(student) == "cnn"
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
               for c in student["cells"] if c["cell_type"] == "code")
    masters_md = [c["source"] for c in read_notebook(MASTER)["cells"] if c["cell_type"] == "markdown"]
    assert [c["source"] for c in student["cells"] if c["cell_type"] == "markdown"] == masters_md
    stubs = [c for c in code_cells(student) if "raise NotImplementedError" in c]
    assert len(stubs) == 4
    for stub in stubs:  # each stub still compiles and defines its function
        ns = {}
        exec(compile(stub, "<stub>", "exec"), ns)


def test_code_cells_neutralise_magics():
    nb = {"cells": [{"cell_type": "code", "source": "!pip install x\n%matplotlib inline\nx = 1\n"},
                    {"cell_type": "markdown", "source": "# title"}]}
    (cell,) = code_cells(nb)
    ns = {}
    exec(cell, ns)
    assert ns["x"] == 1 and cell.count("\n") == 3


def test_corrupt_and_non_notebook_json(tmp_path):
    bad = tmp_path / "a.ipynb"
    bad.write_text('{"cells": [')
    with pytest.raises(NotebookError, match="not valid notebook JSON"):
        read_notebook(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(NotebookError, match="not a notebook"):
        read_notebook(bad)
    with pytest.raises(NotebookError, match="no notebook at"):
        read_notebook(tmp_path / "missing.ipynb")


def test_to_data_refuses_lookalikes():
    class Same(float):
        def __eq__(self, other):
            return True

    class T(torch.Tensor):
        pass

    for value in (Same(1.0), [1, Same(2.0)], {"a": (1, Same(0))}, torch.zeros(2).as_subclass(T),
                  torch.Size([1, 2]), object()):
        with pytest.raises(NotData):
            to_data(value)
    assert to_data({"w": torch.ones(2, requires_grad=True), "n": [1, 2.5, None]})["n"] == [1, 2.5, None]


def _report() -> Report:
    return Report("sub.ipynb", "cnn", [
        QuestionReport("q1", "Shapes", 2, [CaseReport("a", False, 1.0, "ok"),
                                           CaseReport("b", True, 0.0, "expected (3, 4, 4)")]),
        QuestionReport("q2", "Accuracy", 3, [CaseReport("c", False, 1.0, "ok")]),
    ], execution_time=1.234)


def test_gradescope_results_schema(tmp_path):
    data = _report().to_gradescope()
    assert data["score"] == 4.0 and data["extra_data"]["max_score"] == 5
    q1, q2 = data["tests"]
    assert set(q1) >= {"name", "score", "max_score", "status", "output", "visibility"}
    assert (q1["score"], q1["status"], q2["status"]) == (1.0, "failed", "passed")
    assert "expected (3, 4, 4)" not in q1["output"] and "hidden: b" in q1["output"]
    assert "expected (3, 4, 4)" in _report().to_gradescope(show_hidden=True)["tests"][0]["output"]
    path = tmp_path / "deep" / "results.json"
    write_json_atomic(data, path)
    assert json.loads(path.read_text()) == data and not list(path.parent.glob(".results-*"))
    assert "total" in _report().table()


def test_gradebook_csv(tmp_path):
    broken = Report("broken.ipynb", None, error="not valid notebook JSON")
    write_gradebook([_report(), broken], tmp_path / "book.csv")
    rows = list(csv.DictReader(open(tmp_path / "book.csv")))
    assert rows[0]["score"] == "4.0" and rows[0]["q1"] == "1.0" and rows[0]["q2"] == "3.0"
    assert rows[1]["score"] == "0.0" and "JSON" in rows[1]["error"]


def test_assign_writes_student_versions_without_proof(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fmlab", "assign", str(ROOT / "labs"), "--out",
                          str(tmp_path), "--no-prove"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    written = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert written == sorted(p.name for p in (ROOT / "labs").glob("*.ipynb"))
    assert "BEGIN SOLUTION" not in (tmp_path / "01_cnn.ipynb").read_text()


def test_folder_of_submissions_to_gradebook(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    nb = json.loads(MASTER.read_text())
    (subs / "alice.ipynb").write_text(json.dumps(nb))
    (subs / "bob.ipynb").write_text(json.dumps(nb)[:300])
    run = subprocess.run([sys.executable, "-m", "fmlab", "grade", str(subs), "--jobs", "2",
                          "--questions", "q1", "--gradebook", str(tmp_path / "grades.csv"),
                          "--out", str(tmp_path / "results"), "--lab", "cnn"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = {r["submission"]: r for r in csv.DictReader(open(tmp_path / "grades.csv"))}
    assert rows["alice.ipynb"]["score"] == "2.0" and rows["bob.ipynb"]["score"] == "0.0"
    assert json.loads((tmp_path / "results" / "alice.json").read_text())["score"] == 2.0
