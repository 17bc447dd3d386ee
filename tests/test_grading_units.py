"""Unit tests of the grading machinery that need no child process (plus one gradebook run and
a probe of a child's network namespace)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmlab.grading.notebook import (NotebookError, code_cells, lab_id, read_notebook,
                                    schema_problem, strip_solutions, student_version)
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


def test_code_cells_run_as_ipython_would():
    from fmlab.grading.child import Shell, display

    src = ("!pip install x\n%matplotlib inline\nok = (\n    1\n    != 2\n)\n"
           "%time y = 3\ndisplay(ok)\nfiles = !ls\n")
    nb = {"cells": [{"cell_type": "code", "source": src},
                    {"cell_type": "markdown", "source": "# title"},
                    {"cell_type": "code", "source": "%%time\ndef f():\n    return 4\n"},
                    {"cell_type": "code", "source": "%%bash\nrm -rf /\n"}]}
    cells = code_cells(nb)
    assert len(cells) == 3 and cells[0].count("\n") == src.count("\n")  # line numbers kept
    assert "!= 2" in cells[0]  # a continued comparison is Python, not a shell line
    notes: list[str] = []
    ns = {"display": display}
    ns["get_ipython"] = lambda: Shell(ns, notes)
    for cell in cells:
        exec(cell, ns)
    assert ns["ok"] is True and ns["y"] == 3 and ns["files"] == [] and ns["f"]() == 4
    assert notes == ["a %%bash cell was skipped while grading"]


def test_black_style_continuations_are_not_magics():
    src = 'x = (\n    "a"\n    % ()\n)\nflag = (\n    1\n    != 1\n)\n'
    (cell,) = code_cells({"cells": [{"cell_type": "code", "source": src}]})
    assert cell == src


def test_a_notebook_that_breaks_the_format_is_named_but_still_read(tmp_path):
    nb = json.loads(MASTER.read_text())
    del nb["cells"][3]["outputs"]  # a code cell without its outputs list
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps(nb))
    problem = schema_problem(read_notebook(path))
    assert problem and "outputs" in problem, problem
    assert len(code_cells(read_notebook(path))) == len(code_cells(read_notebook(MASTER)))
    with pytest.raises(NotebookError, match="not a valid notebook: .*outputs"):
        read_notebook(path, strict=True)


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


def test_a_question_with_a_mistake_keeps_at_most_half_its_points():
    """Half the mean when a case scored below 1, unless its score is read off a scale."""
    q = lambda *cases: QuestionReport("q", "t", 4, [CaseReport(f"c{i}", False, s, "", scale)
                                                    for i, (s, scale) in enumerate(cases)])
    assert q((1.0, False), (1.0, False)).score == 4.0
    assert q((1.0, False), (0.0, False)).score == 1.0  # half of 2
    assert q((1.0, False), (0.9, False)).score == 1.9  # a sub-check failed: half of 3.8
    assert q((1.0, False), (0.5, True)).score == 3.0  # a trained model half-way up its scale
    assert q((0.5, True), (0.0, False)).score == 0.5


def test_gradescope_results_schema(tmp_path):
    data = _report().to_gradescope()
    assert data["score"] == 3.5 and data["extra_data"]["max_score"] == 5  # q1 has a failed case
    q1, q2 = data["tests"]
    assert set(q1) >= {"name", "score", "max_score", "status", "output", "visibility"}
    assert (q1["score"], q1["status"], q2["status"]) == (0.5, "failed", "passed")
    assert "expected (3, 4, 4)" not in q1["output"] and "hidden: b" in q1["output"]
    assert "expected (3, 4, 4)" in _report().to_gradescope(show_hidden=True)["tests"][0]["output"]
    path = tmp_path / "deep" / "results.json"
    write_json_atomic(data, path)
    assert json.loads(path.read_text()) == data and not list(path.parent.glob(".*.tmp"))
    assert "total" in _report().table()


def test_gradebook_csv(tmp_path):
    broken = Report("broken.ipynb", None, error="not valid notebook JSON")
    write_gradebook([_report(), broken], tmp_path / "book.csv")
    rows = list(csv.DictReader(open(tmp_path / "book.csv")))
    assert rows[0]["score"] == "3.5" and rows[0]["q1"] == "0.5" and rows[0]["q2"] == "3.0"
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


def test_one_wording_for_the_students_errors():
    from fmlab.grading.messages import TimeLimit, describe_error, mentions_out_of_memory

    def broken():
        return {}["missing"]

    ns = {"broken": broken}
    exec(compile("def answer():\n    return 1 / 0\n", "<cell 4>", "exec"), ns)
    try:
        ns["answer"]()
    except ZeroDivisionError as err:
        assert describe_error(err) == "raised ZeroDivisionError: division by zero (line 2 of answer, cell 4)"
    assert describe_error(NotImplementedError()).startswith("not implemented yet")
    assert describe_error(MemoryError(), 512) == "ran out of memory (the limit is 512 MB)"
    assert describe_error(RuntimeError("DefaultCPUAllocator: not enough memory"), 64).startswith("ran out")
    assert describe_error(TimeLimit("timed out: stopped ...")) == "timed out: stopped ..."
    assert mentions_out_of_memory("... std::bad_alloc ...") and not mentions_out_of_memory("fine")


def test_forbid_wildcards_and_checks_are_validated(tmp_path):
    from fmlab.grading.forbid import expand
    from fmlab.grading.spec import load_questions

    names = expand(["fmlab.losses.*", "torch.softmax"])
    assert "fmlab.losses.cross_entropy" in names and "torch.softmax" in names
    assert not any(n.rsplit(".", 1)[1].startswith("_") for n in names)
    bad = tmp_path / "bad.py"
    bad.write_text("from fmlab.grading import Question, Result\n"
                   "QUESTIONS = [Question('q1', 1, 't', ('f',), lambda ns, c: 0, lambda c, g: Result.ok(),"
                   " lambda: [{}], forbid=('torch.no_such_function',))]\n")
    with pytest.raises(ValueError, match="q1's forbid names a reference that does not exist"):
        load_questions(bad)


def test_a_forbidden_library_that_is_not_installed_forbids_nothing(tmp_path):
    """Colab's bare install has no torchattacks or peft: the labs that forbid them still load
    (a student cannot call what is not there), and the other names stay forbidden."""
    from fmlab.grading.forbid import expand
    from fmlab.grading.spec import load_questions

    assert expand(["not_installed_anywhere.*", "not_installed_anywhere.attack",
                   "torch.softmax"]) == ["torch.softmax"]
    lab = tmp_path / "lab.py"
    lab.write_text("from fmlab.grading import Question, Result\n"
                   "QUESTIONS = [Question('q1', 1, 't', ('f',), lambda ns, c: 0, "
                   "lambda c, g: Result.ok(), lambda: [{}], "
                   "forbid=('not_installed_anywhere.*', 'torch.softmax'))]\n")
    assert [q.id for q in load_questions(lab)] == ["q1"]


def test_grade_many_leaves_the_callers_limits_alone():
    from fmlab.grading.grader import grade_many
    from fmlab.grading.runner import Limits

    limits = Limits(threads=3)
    assert grade_many([], jobs=1, limits=limits) == [] and limits == Limits(threads=3)


def test_result_files_must_be_plain_files_of_their_own(tmp_path):
    from fmlab.grading.runner import _load_result

    real = tmp_path / "case-0.pt"
    torch.save({"ok": True, "value": 1.5}, real)
    assert _load_result(real, 16) == (1.5, None)
    link = tmp_path / "case-1.pt"
    link.symlink_to(real)  # another submission's result, say
    hard = tmp_path / "case-2.pt"
    os.link(real, hard)
    for path in (link, hard):
        value, error = _load_result(path, 16)
        assert value is None and "not a plain file" in error


def test_runtime_thread_default(monkeypatch):
    """Half the cores this process may use (one on two cores); FMLAB_THREADS overrides. Graded
    children get their count from the grader (FMLAB_THREADS=1 by default)."""
    from fmlab import runtime

    monkeypatch.delenv("FMLAB_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert runtime.default_threads() == max(1, cores // 2)
    monkeypatch.setenv("FMLAB_THREADS", "3")
    assert runtime.default_threads() == 3
    before = torch.get_num_threads()
    try:
        assert runtime.set_threads() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_seeded_draws_do_not_mix_between_threads():
    """Under --jobs the parent prepares and grades submissions in threads; each thread's
    seeded block must draw the same numbers as it does alone (a reference model built in one
    thread once drew its bias from another thread's seed, and the master lost points)."""
    import threading
    import time

    from fmlab.grading.spec import seeded

    def draws():
        out = []
        with seeded():
            for _ in range(20):
                out.append(torch.rand(4))
                time.sleep(0.001)  # let another thread run between two draws
        return torch.cat(out)

    alone = draws()
    got = [None] * 4

    def work(i):
        got[i] = draws()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(g, alone) for g in got)


def test_the_grading_engine_names_no_dataset_and_no_lab():
    """fmlab/grading/ knows no particular lab or dataset: a checks file declares what its lab
    needs (MODULES, DATA, PRIVATE, prepare=training_images(name, ...)) and the engine reads it."""
    import re

    from fmlab.data import NAMES

    root = Path(__file__).resolve().parents[1]
    labs = [p.stem for p in (root / "labs" / "checks").glob("*.py") if not p.stem.startswith("_")]
    common = {"digits", "shapes"}  # English words too: only quoted ("digits") is a name
    names = [n for n in [*NAMES, *labs] if n not in common]
    words = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b|(['\"])("
                       + "|".join(common) + r")\2", re.I)
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted((root / "fmlab" / "grading").glob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if words.search(line.replace("fmlab.data", ""))]
    assert not found, "\n".join(found)


def test_what_a_checks_file_declares_private_is_out_of_reach(tmp_path):
    from fmlab.grading.grader import _protected_paths
    from fmlab.grading.spec import declared

    (tmp_path / "checks").mkdir()
    checks = tmp_path / "checks" / "demo.py"
    checks.write_text('PRIVATE = ("../*.ipynb",)\n')
    (tmp_path / "master.ipynb").write_text("{}")
    module = type(sys)("demo")
    exec(checks.read_text(), module.__dict__)
    modules, data, private = declared(module, checks)
    assert (modules, data, private) == ((), (), ("../*.ipynb",))
    paths = _protected_paths(None, None, tmp_path / "sub" / "s.ipynb", checks, data, private)
    assert str((tmp_path / "master.ipynb").resolve()) in paths, paths
    module.PRIVATE = ("../*.ipynb", 3)
    with pytest.raises(ValueError, match="PRIVATE must be a tuple of glob patterns"):
        declared(module, checks)


LOOPBACK_PROBE = """
import socket, sys
sys.path.insert(0, sys.argv[1])
import confine

def talks():
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            socket.create_connection(server.getsockname(), timeout=2).close()
        return True
    except OSError:
        return False

before = talks()
confine.loopback_up()
print(before, talks())
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "userns"])
def test_a_child_in_its_own_network_namespace_gets_a_loopback_of_its_own(user):
    """A new network namespace has its loopback interface down; the child's first program
    brings it up before it drops its privileges, so the child's own processes can talk on
    127.0.0.1 (a lab whose cases start processes declares PROCESSES)."""
    from fmlab.grading import boundary, confine

    unshare = boundary._unshare()
    if boundary._probe(unshare, user=user) is not None or (not user and os.geteuid() != 0):
        pytest.skip("this machine cannot create these namespaces")
    prefix = [unshare, *(["--user", "--map-root-user"] if user else []), "--net", "--"]
    run = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", LOOPBACK_PROBE,
                          os.path.dirname(confine.__file__)],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["False", "True"], run.stdout + run.stderr


def test_a_lab_that_starts_processes_is_not_graded_without_a_boundary(tmp_path, monkeypatch):
    """Where only the audit hook stands (it refuses processes and sockets), a lab that declares
    PROCESSES is refused with what to do, before any child starts; a PROCESSES that is not a
    bool is a broken checks file."""
    from fmlab.grading.grader import grade_notebook
    from fmlab.grading.runner import GradingError

    checks = tmp_path / "demo.py"
    checks.write_text(
        "from fmlab.grading import Question, Result\n"
        "PROCESSES = True\n"
        "QUESTIONS = [Question('q1', 1, 'one', ('f',), lambda ns, c: 1,\n"
        "                      lambda c, got: Result.ok(), lambda: [{}])]\n")
    nb = {"cells": [], "metadata": {"fmlab": {"lab": "demo"}}, "nbformat": 4, "nbformat_minor": 5}
    sub = tmp_path / "sub.ipynb"
    sub.write_text(json.dumps(nb))
    monkeypatch.setenv("FMLAB_GRADING_ISOLATION", "none")
    with pytest.raises(GradingError, match=r"starts processes .* grade as root .* user namespaces"):
        grade_notebook(sub, checks=checks)
    checks.write_text(checks.read_text().replace("PROCESSES = True", "PROCESSES = 'yes'"))
    with pytest.raises(GradingError, match="PROCESSES must be True or False"):
        grade_notebook(sub, checks=checks)
