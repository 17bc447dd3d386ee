"""Bad submissions: each is scored with a clear message per question; the grader never crashes.

All bad notebooks are graded once, two at a time, with small limits (q1-q3 only: q4 trains a
model and is covered by tests/test_labs.py).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from fixtures.bad_submissions import (BAD, HOSTILE_ATTEMPTS, ROOT, hostile_files, master,
                                      stopped_by_cpu_limit)
from fixtures.cli import fmlab_here
from fmlab.grading.grader import grade_notebook
from fmlab.grading.runner import Limits

HIDDEN = ROOT / "labs" / "hidden"
ONLY = ["q1", "q2", "q3"]
# The CPU-time limit of each case and cell: the master's take milliseconds each (the memory
# bomb runs out of memory in 0.3 s of CPU); what loops forever stops here, its wall-clock
# ceiling five times later.
LIMIT_S = 2
FULL = {"q1": 2.0, "q2": 2.0, "q3": 3.0}


def limits() -> Limits:
    return Limits(case_timeout=LIMIT_S, cell_timeout=LIMIT_S, memory_mb=1536, threads=1, total_timeout=120)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every bad submission's Report (and, for hostile_files, the exit status and results of
    ``fmlab grade``), graded once."""
    folder = tmp_path_factory.mktemp("bad")
    nb = master()
    out = folder / "hostile-results.json"
    for name, build in BAD.items():
        sub = hostile_files(nb, out, ROOT / "fmlab-escaped.txt") if name == "hostile_files" else build(nb)
        (folder / f"{name}.ipynb").write_text(json.dumps(sub))

    def grade(name):
        if name == "hostile_files":
            status = fmlab_here("grade", str(folder / f"{name}.ipynb"), "--tests", str(HIDDEN),
                                "--out", str(out), "--questions", ",".join(ONLY), "--timeout",
                                str(LIMIT_S), "--show-hidden")
            return status, json.loads(out.read_text())
        return grade_notebook(folder / f"{name}.ipynb", HIDDEN, limits=limits(), only=ONLY)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(BAD, pool.map(grade, BAD)))


def scores(report) -> dict[str, float]:
    return {q.id: q.score for q in report.questions}


def messages(report, qid: str) -> str:
    return "\n".join(c.message for c in report.question(qid).cases)


def test_syntax_error(graded):
    r = graded["syntax_error"]
    assert scores(r) == {**FULL, "q2": 0.0}
    assert "accuracy is not defined in the notebook" in messages(r, "q2")
    assert any("syntax error at line 2" in n for n in r.notes), r.notes


def test_exception_at_import(graded):
    r = graded["exception_at_import"]
    assert scores(r) == FULL  # the failing cell is recorded; the next cells still run
    assert any("ModuleNotFoundError" in n and "no_such_module_for_grading" in n for n in r.notes), r.notes


def test_exception_inside_one_exercise(graded):
    r = graded["exception_in_exercise"]
    assert scores(r) == {**FULL, "q2": 0.0}
    assert "raised ZeroDivisionError: division by zero (line 2 of accuracy" in messages(r, "q2")


def test_infinite_loop_hits_the_time_limit(graded):
    r = graded["infinite_loop"]
    assert scores(r) == {**FULL, "q1": 0.0}
    msgs = messages(r, "q1")
    assert stopped_by_cpu_limit(msgs, LIMIT_S), msgs
    assert "not run: an earlier case of q1 timed out" in msgs


def test_infinite_loop_that_ignores_the_timers_is_killed(graded):
    r = graded["infinite_loop_ignoring_alarm"]
    assert scores(r) == {**FULL, "q1": 0.0}  # a fresh child graded q2 and q3
    assert stopped_by_cpu_limit(messages(r, "q1"), LIMIT_S), messages(r, "q1")
    assert r.children >= 2


def test_top_level_infinite_loop_only_loses_that_cell(graded):
    r = graded["top_level_infinite_loop"]
    assert scores(r) == FULL
    assert any(f"stopped at its CPU-time limit of {LIMIT_S} s" in n or "wall-clock ceiling" in n
               for n in r.notes), r.notes


def test_memory_bomb(graded):
    r = graded["memory_bomb"]
    assert scores(r) == {**FULL, "q1": 0.0, "q2": 0.0}
    for qid in ("q1", "q2"):
        assert "ran out of memory (the limit is 1536 MB)" in messages(r, qid)


def test_sys_exit_in_an_exercise_and_at_top_level(graded):
    r = graded["sys_exit"]
    assert scores(r) == {**FULL, "q1": 0.0}
    assert "called sys.exit(0)" in messages(r, "q1")
    assert any("sys.exit(0)" in n for n in r.notes), r.notes


def test_os_exit_in_an_exercise(graded):
    r = graded["os_exit_in_exercise"]
    assert scores(r) == {**FULL, "q2": 0.0}
    msgs = messages(r, "q2")
    assert "the process exited (os._exit / sys.exit, status 0) during q2" in msgs
    assert "not run: an earlier case of q2 stopped the process" in msgs


def test_os_exit_at_top_level(graded):
    r = graded["os_exit_top_level"]
    assert scores(r) == {"q1": 0.0, "q2": 0.0, "q3": 0.0}
    assert "while running code cell" in messages(r, "q1") and "the process exited" in messages(r, "q1")
    assert r.children == 1  # no endless retries


def test_monkeypatching_the_checker_changes_nothing(graded):
    r = graded["monkeypatch"]
    assert scores(r) == {**FULL, "q1": 0.0, "q2": 0.0}
    assert "got tuple of length 3, expected (32, 26, 26)" in messages(r, "q1")
    assert "the accuracy differs" in messages(r, "q2")


def test_objects_that_equal_everything_are_refused(graded):
    r = graded["always_equal"]
    assert scores(r) == {**FULL, "q1": 0.0, "q2": 0.0}
    assert "not plain data" in messages(r, "q1")
    assert "not plain data" in messages(r, "q2") or "could not be saved" in messages(r, "q2")


def test_missing_function(graded):
    r = graded["missing_function"]
    assert scores(r) == {**FULL, "q3": 0.0}
    assert "train_one_epoch is not defined in the notebook" in messages(r, "q3")


def test_hidden_tests_results_and_processes_are_out_of_reach(graded):
    status, results = graded["hostile_files"]
    assert status == 0
    q2 = next(t for t in results["tests"] if t["number"] == "q2")
    # read hidden, list hidden, write results, replace results, a process reading the hidden
    # tests, the network, ctypes, write outside, read data: each failed
    assert f"got str '{HOSTILE_ATTEMPTS} refused'" in q2["output"], q2["output"]
    assert results["score"] == 5.0 and q2["score"] == 0  # the parent's results.json, not the fake one
    assert not (ROOT / "fmlab-escaped.txt").exists()


def test_renamed_notebook_still_grades(tmp_path):
    renamed = tmp_path / "my lab (final) v2.ipynb"
    renamed.write_text(json.dumps(master()))
    r = grade_notebook(renamed, None, limits=limits(), only=["q1"])
    assert r.lab == "cnn" and scores(r) == {"q1": 2.0}


def test_notebook_without_lab_id(tmp_path, capsys):
    nb = master()
    del nb["metadata"]["fmlab"]
    path = tmp_path / "nolab.ipynb"
    path.write_text(json.dumps(nb))
    out = tmp_path / "results.json"
    assert fmlab_here("grade", str(path), "--out", str(out)) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["score"] == 0 and "does not say which lab it is" in results["output"]
    assert "--lab" in results["output"]
    r = grade_notebook(path, None, lab="cnn", limits=limits(), only=["q1"])
    assert scores(r) == {"q1": 2.0}


def test_corrupt_notebook_json(tmp_path):
    path = tmp_path / "corrupt.ipynb"
    path.write_text(json.dumps(master())[:5000])  # truncated, as by a failed upload
    out = tmp_path / "results.json"
    status = fmlab_here("grade", str(path), "--out", str(out), "--lab", "cnn", "--min-score", "1")
    assert status == 1  # graded (zero), and below --min-score
    results = json.loads(out.read_text())
    assert results["score"] == 0 and "not valid notebook JSON" in results["output"]
    assert [t["number"] for t in results["tests"]] == ["q1", "q2", "q3", "q4"]
    assert all(t["status"] == "failed" and "not valid notebook JSON" in t["output"] for t in results["tests"])
    status = fmlab_here("grade", str(path), "--out", str(out))
    assert status == 0 and json.loads(out.read_text())["tests"] == []
