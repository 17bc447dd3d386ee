"""What decides a score stays in the grader's own process, the parent.

The parent keeps the clock (a forged progress line ends a case without its result, and the
next case's clock runs), sends each case's inputs only when the case begins (so the notebook's
cells cannot find them), reads each result as it arrives with a size cap and drops it once
graded, and keeps what the notebook says to a few short notes marked as the notebook's own; it
runs a checks file once, and again when the file changes. And correct work keeps its marks: a
float64 answer where the lab states no dtype.

The submissions are built in tests/fixtures/attacks.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fixtures import attacks
from fmlab.grading import expect_close
from fmlab.grading.grader import grade_notebook
from fmlab.grading.runner import NOTE_CHARS, NOTES_MAX, RESULT_MB, Limits

ROOT = attacks.ROOT
HIDDEN = ROOT / "labs" / "hidden"
HIDDEN_CASE = "a kernel as large as the input"  # the name of one of q1's hidden cases

pytestmark = pytest.mark.slow


def write(folder: Path, name: str, nb: dict) -> Path:
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_a_forged_done_line_does_not_stop_the_clock(tmp_path):
    """Before, a case that said "done" early and switched off the child's timers ran on with
    no limit but the submission's (900 s by default). Now a "done" ends the current case, as
    it says, with whatever result the child has saved for it (none), and the parent's clock
    keeps running on whatever the child does next."""
    r = grade_notebook(write(tmp_path, "forged", attacks.forged_done()), HIDDEN,
                       limits=Limits(case_timeout=2, threads=1, total_timeout=300), only=["q1"])
    q1 = r.question("q1")
    assert q1.score == 0, q1.output(True)
    assert r.execution_time < 90, f"graded in {r.execution_time:.0f} s"
    # each forged "done" ended its case with nothing to grade, and the spinning child was
    # stopped at the limit the parent kept
    assert all("no result came back" in c.message or "timed out" in c.message
               for c in q1.cases), q1.output(True)


def test_the_cells_cannot_find_the_case_inputs_in_their_own_process(tmp_path):
    r = grade_notebook(write(tmp_path, "own_memory", attacks.own_memory(HIDDEN_CASE)), HIDDEN,
                       limits=Limits(threads=1), only=["q1"])
    assert r.question("q1").score == 0, r.question("q1").output(True)


GRADE_AND_MEASURE = """
import json, sys
from fmlab.grading.grader import grade_notebook
from fmlab.grading.report import write_json_atomic
from fmlab.grading.runner import Limits
r = grade_notebook(sys.argv[1], sys.argv[2], limits=Limits(threads=1), only=["q1"],
                   results_path=sys.argv[3])
write_json_atomic(r.to_gradescope(show_hidden=True), sys.argv[3])
# VmHWM: this process's peak resident memory since its exec (ru_maxrss would include the pytest
# worker's memory before the exec, which Linux carries over)
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_mb": int(peak.split()[1]) / 1024}))
"""


def test_oversized_results_and_flooded_notes_stay_small(tmp_path):
    """Every case of q1 returns 100 MB; 40 cells fail with 2 MB messages; a 20 MB progress line
    has no end; a case rewrites the notes file. The grader (this script's own process, not
    its children) stays under 1 GB and results.json under 1 MB, with no forged note in it."""
    sub = write(tmp_path, "oversized", attacks.oversized())
    results = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(GRADE_AND_MEASURE), str(sub),
                          str(HIDDEN), str(results)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    data = json.loads(results.read_text())
    size = results.stat().st_size
    print(f"grader max RSS {measured['maxrss_mb']:.0f} MB, results.json {size} bytes")
    assert measured["maxrss_mb"] < 1024, measured
    assert size < 1 << 20, size
    assert data["score"] == 0
    q1 = next(t for t in data["tests"] if t["number"] == "q1")["output"]
    assert f"at most {RESULT_MB} MB may come back" in q1, q1
    notes = data["output"]
    assert "full marks" not in notes  # the case's rewrite came after the notes were read
    assert notes.count("[from the notebook]") == NOTES_MAX + 1, notes[:2000]
    assert "NOTE FROM THE GRADER" in notes  # the cells' own words, marked as theirs
    assert all(len(line) < NOTE_CHARS + 40 for line in notes.splitlines()), notes[:2000]


def test_a_float64_answer_where_the_lab_states_no_dtype_keeps_its_marks(tmp_path):
    r = grade_notebook(write(tmp_path, "float64", attacks.float64_answers()), HIDDEN,
                       limits=Limits(threads=1), only=["q1"])
    q1 = r.question("q1")
    assert q1.score == q1.points, q1.output(True)


def test_expect_close_checks_a_dtype_only_where_asked():
    e = torch.tensor([1.0, 2.0])
    assert expect_close(e.double(), e).passed  # no dtype stated: any floating dtype
    assert not expect_close(e.double(), e, check_dtype=True).passed
    assert "dtype torch.float64" in expect_close(e.double(), e, check_dtype=True).message
    assert not expect_close(torch.tensor([1, 2]), e).passed  # an integer result for a float
    assert expect_close(torch.tensor([1, 2]), e, check_dtype=False).passed
    assert not expect_close(e.double() + 1, e).passed  # the values still count


def test_no_chapter_or_public_checks_file_defines_a_labs_exercise():
    """An exercise's function, by the name and parameters the lab asks for, is written in the
    master lab only: not in the public checks that ship with the package, not in a chapter's
    code. (A chapter's ``accuracy(model)`` is another function than the CNN lab's
    ``accuracy(logits, targets)``.)"""
    import re

    import nbformat

    from fmlab.grading import checks_path
    from fmlab.grading.notebook import lab_id, read_notebook
    from fmlab.grading.spec import load_questions

    def code(path):
        return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                         if c.cell_type == "code")

    def signatures(src, name):
        return {re.sub(r"\s+", "", m) for m in
                re.findall(rf"^\s*(?:def|class) {name}\b\s*(\([^)]*\))?", src, re.M)}

    chapters = {p.name: code(p) for p in sorted((ROOT / "book").glob("*.ipynb"))}
    found = []
    for master in sorted((ROOT / "labs").glob("*.ipynb")):
        checks = checks_path(lab_id(read_notebook(master)))
        names = {n for q in load_questions(checks) for n in q.requires}
        sources = {checks.name: checks.read_text(), **chapters}
        for name in sorted(names):
            asked = signatures(code(master), name)
            assert asked, f"{master.name} does not define {name}"
            found += [f"{where} defines {name}{sig}" for where, src in sources.items()
                      for sig in signatures(src, name) & asked]
    assert not found, found


def test_single_file_grading_hides_the_classmates_beside_it():
    """In a folder outside /tmp (the child's /tmp is its own), as an instructor's would be."""
    import shutil

    subs = ROOT / "tests" / f".subs-{os.getpid()}"
    subs.mkdir()
    try:
        write(subs, "a_classmate", attacks.master("cnn"))
        thief = write(subs, "b_thief", attacks.classmate_reader(subs))
        r = grade_notebook(thief, HIDDEN, limits=Limits(threads=1), only=["q1", "q2"])
    finally:
        shutil.rmtree(subs)
    assert {q.id: q.score for q in r.questions} == {"q1": 0, "q2": 0}, r.table(True)


def test_correct_work_in_other_forms_keeps_its_marks(tmp_path):
    """torchao imported (ctypes), q1's function compiled (``aot_eager``, the quick backend; the
    default one, inductor, was checked by hand: the same marks, 28.7 s for the whole grading),
    a module written with %%writefile and imported, %timeit with options and -o: full marks, no
    notes."""
    from fmlab.grading.sandbox import Sandbox

    r = grade_notebook(write(tmp_path, "forms", attacks.correct_work_in_other_forms("aot_eager")),
                       HIDDEN, limits=Limits(threads=1), only=["q1"])
    assert r.question("q1").score == 2.0 and not r.notes, r.table(True) + "\n".join(r.notes)
    Sandbox([str(tmp_path)], [], [])._check_write(os.devnull, "writing")  # does not raise


def test_the_parent_reads_the_source_a_disarmed_child_cannot_hide(tmp_path):
    """With the child's forbid module disarmed, a direct reference still fails its question
    (the parent read it in the source before anything ran); a name built at run time keeps
    its score but is flagged for the instructor, in results.json's extra_data, the gradebook
    and the instructor's table (--show-hidden), not in what the student is shown."""
    from fmlab.grading.report import write_gradebook

    r = grade_notebook(write(tmp_path, "tampered", attacks.tampered_delegation()), HIDDEN,
                       limits=Limits(threads=1), only=["q1", "q2"])
    q1, q2 = r.question("q1"), r.question("q2")
    assert q1.score == 0 and "asks you to write this yourself" in q1.output(True), q1.output(True)
    assert "your code names F.softmax" in q1.output(True)
    assert q2.score == q2.points, q2.output(True)  # what the scan cannot read keeps its score
    assert list(r.flags) == ["q2"] and "getattr with a computed name" in r.flags["q2"][0], r.flags
    assert r.to_gradescope(show_hidden=True)["extra_data"]["flags"] == r.flags
    assert "flags" not in r.to_gradescope()["extra_data"]  # a student's CI keeps results.json
    assert "FLAGGED" in r.table(show_hidden=True) and "FLAGGED" not in r.table()
    assert "computed name" not in json.dumps(r.to_gradescope()["tests"]) + r.to_gradescope()["output"]
    write_gradebook([r], tmp_path / "grades.csv")
    assert "q2: getattr with a computed name" in (tmp_path / "grades.csv").read_text()


def test_a_thread_the_answer_starts_meets_the_same_block(tmp_path):
    """torch's function mode is per thread: an answer that hands the forbidden call to a worker
    thread meets it there too; a notebook that imports threading is flagged."""
    from fmlab.grading.forbid import blocked

    x = torch.randn(2, 3)
    with blocked(["torch.ops.aten._softmax"], "q1"):
        with pytest.raises(RuntimeError, match="asks you to write this yourself"):
            torch.ops.aten._softmax(x, 1, False)
        errors = []

        def worker():
            try:
                torch.ops.aten._softmax(x, 1, False)
            except RuntimeError as err:
                errors.append(str(err))

        import threading
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert errors and "asks you to write this yourself" in errors[0]
    torch.ops.aten._softmax(x, 1, False)  # restored after the case
    nb = attacks.with_cells(attacks.stub("losses"), """
import threading
from concurrent.futures import ThreadPoolExecutor
def softmax(z, dim=-1):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(torch.ops.aten._softmax, z, dim, False).result()
""")
    r = grade_notebook(write(tmp_path, "threads", nb), HIDDEN, limits=Limits(threads=1),
                       only=["q1"])
    assert r.question("q1").score == 0, r.question("q1").output(True)
    assert "starts threads of its own" in " ".join(r.flags.get("notebook", [])), r.flags


def test_a_result_file_is_read_once_and_bounded(tmp_path):
    """The child may still run while its result is read: the read stops at the cap, whatever
    the file's size when it was checked."""
    from fmlab.grading.runner import _load_result

    path = tmp_path / "case-0.pt"
    torch.save({"ok": True, "value": torch.zeros(1 << 20)}, path)  # 4 MB
    value, error = _load_result(path, 16)
    assert error is None and value.shape == (1 << 20,)
    value, error = _load_result(path, 1)
    assert value is None and "at most 1 MB may come back" in error, error


def test_a_checks_file_runs_once_per_grader_and_again_when_edited(tmp_path):
    """What a checks file caches (a reference model its prepare trains) is computed once for
    all the submissions a grader grades; an edited file is run again."""
    from fmlab.grading.grader import _checks_module

    source = (ROOT / "labs" / "checks" / "losses.py").read_text()
    path = tmp_path / "losses.py"
    path.write_text(source)
    first = _checks_module(path)
    assert _checks_module(path) is first
    path.write_text(source + "\n# edited\n")
    assert _checks_module(path) is not first
