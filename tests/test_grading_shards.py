"""Grading a class across machines: ``fmlab grade --shard K/N`` and ``fmlab gradebook``.

One fixture grades: the losses lab's q1 for the master, a wrong softmax and an unreadable
notebook, as one run and again in two shards (four grading children of about 2.5 s of CPU
each; the stub would add two more and show nothing the wrong answer does not). The other tests
grade nothing: the partition, the merge with missing, failed and duplicated submissions, the
Canvas and Gradescope files, the errors. The commands run in-process (``fmlab.cli.main``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest

from fmlab.cli import main
from fmlab.grading.gradebook import in_shard, parse_shard, shard_of
from fmlab.grading.report import CaseReport, QuestionReport, Report, write_json_atomic
from fmlab.grading.spec import load_module

ROOT = Path(__file__).resolve().parents[1]
MASTER = ROOT / "labs" / "02_losses.ipynb"
HIDDEN = ROOT / "labs" / "hidden"
WRONG_SOFTMAX = load_module(ROOT / "tests" / "wrong_answers" / "losses.py").WRONG["q1"]["global_max"]


def fmlab(capsys, *argv) -> tuple[int, str, str]:
    """``fmlab ARGV`` in this process: its exit status, stdout and stderr. (``fmlab grade`` sets
    FMLAB_PROFILE; the variable is restored afterwards.)"""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMLAB_PROFILE", os.environ.get("FMLAB_PROFILE", "quick"))
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:  # argparse's errors
            code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def rows(path: Path) -> dict[str, dict]:
    return {r.get("submission") or r.get("Name"): r for r in csv.DictReader(open(path, encoding="utf-8"))}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The folder graded as one run and as shards 1/2 and 2/2, and the merge of the shards."""
    root = tmp_path_factory.mktemp("class")
    subs = root / "submissions"
    subs.mkdir()
    master = json.loads(MASTER.read_text())
    wrong = dict(master, cells=master["cells"] + [{"cell_type": "code", "execution_count": None,
                                                   "metadata": {}, "outputs": [],
                                                   "source": WRONG_SOFTMAX}])
    (subs / "master.ipynb").write_text(json.dumps(master))
    (subs / "wrong.ipynb").write_text(json.dumps(wrong))
    (subs / "corrupt.ipynb").write_text(json.dumps(master)[:200])  # cut short: not JSON
    common = ("--tests", HIDDEN, "--questions", "q1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMLAB_PROFILE", "quick")  # main sets it for grading; restored afterwards
        runs = {"one": main(["grade", str(subs), *map(str, common), "--out", str(root / "one"),
                             "--gradebook", str(root / "one.csv")])}
        for k in (1, 2):
            runs[k] = main(["grade", str(subs), *map(str, common), "--shard", f"{k}/2",
                            "--out", str(root / f"shard{k}"), "--gradebook", str(root / f"shard{k}.csv")])
    return root, subs, runs


def test_two_shards_merged_give_the_gradebook_of_one_run(graded, capsys):
    root, subs, runs = graded
    assert runs == {"one": 0, 1: 0, 2: 0}
    code, out, err = fmlab(capsys, "gradebook", root / "shard1", root / "shard2", "--expect", subs,
                           "--out", root / "merged.csv")
    assert code == 0, err  # an unreadable notebook scores 0; nothing is missing or failed
    assert (root / "merged.csv").read_text() == (root / "one.csv").read_text()
    book = rows(root / "merged.csv")
    assert book["master.ipynb"]["score"] == "2.0" and book["master.ipynb"]["status"] == "graded"
    assert 0 < float(book["wrong.ipynb"]["q1"]) <= 1.0, book["wrong.ipynb"]  # at most half of 2
    assert book["corrupt.ipynb"]["status"] == "not graded" and book["corrupt.ipynb"]["score"] == "0.0"
    assert "1 not graded" in err and "corrupt.ipynb" in err and "3 submissions" in out


def test_each_shard_grades_its_part_and_the_parts_make_the_folder(graded):
    root, subs, _ = graded
    parts = [set(rows(root / f"shard{k}.csv")) for k in (1, 2)]
    files = [{p.stem + ".ipynb" for p in (root / f"shard{k}").glob("*.json")} for k in (1, 2)]
    assert parts == files and all(parts)  # a results file per submission, both shards busy
    assert not parts[0] & parts[1] and parts[0] | parts[1] == {p.name for p in subs.glob("*.ipynb")}
    assert parts[0] == {p.name for p in in_shard(sorted(subs.glob("*.ipynb")), 1, 2)}


def test_a_lost_shard_is_missing_and_a_shard_merged_twice_is_duplicated(graded, capsys):
    root, subs, _ = graded
    code, out, err = fmlab(capsys, "gradebook", root / "shard1", "--expect", subs,
                           "--out", root / "lost.csv")
    lost = {s for s, r in rows(root / "lost.csv").items() if r["status"] == "missing"}
    assert code == 1 and lost == set(rows(root / "shard2.csv")) and all(s in err for s in lost)
    code, out, err = fmlab(capsys, "gradebook", root / "shard1", root / "shard2", root / "one",
                           "--out", root / "twice.csv")
    twice = rows(root / "twice.csv")
    assert code == 1 and "3 graded more than once" in err
    assert all(r["status"] == "duplicate" and r["score"] == "" for r in twice.values()), twice


# ----------------------------------------------------------------------------------------------
# Without grading
# ----------------------------------------------------------------------------------------------

def test_the_partition_is_stable_disjoint_and_complete():
    names = [f"student{i:03d}.ipynb" for i in range(300)] + ["Zoë.ipynb", "a b.ipynb"]
    for n in (1, 2, 3, 7):
        parts = [[x for x in names if shard_of(x, n) == k] for k in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(names)  # each name in exactly one part
        assert all(len(p) <= 2 * len(names) / n for p in parts), [len(p) for p in parts]
    # the documented formula, computed here independently: the name alone decides
    digest = hashlib.sha256("student007.ipynb".encode()).digest()
    assert shard_of("student007.ipynb", 7) == int.from_bytes(digest[:8], "big") % 7 + 1
    assert shard_of("Zoe\u0308.ipynb", 5) == shard_of("Zo\u00eb.ipynb", 5)  # macOS's NFD name
    paths = [Path("x") / n for n in names]
    assert in_shard(paths[:40], 2, 3) == [p for p in in_shard(paths, 2, 3) if p in paths[:40]]


@pytest.mark.parametrize("shard, says", [("0/2", "K counts from 1"), ("3/2", "K counts from 1"),
                                          ("x", "two whole numbers"), ("1/0", "K counts from 1"),
                                          ("1-2", "two whole numbers")])
def test_a_bad_shard_is_refused_with_status_2(shard, says, capsys, tmp_path):
    with pytest.raises(ValueError, match=says):
        parse_shard(shard)
    code, _, err = fmlab(capsys, "grade", tmp_path, "--shard", shard)
    assert code == 2 and says in err and "--shard" in err


def test_shard_needs_a_folder_and_an_empty_shard_is_no_error(capsys, tmp_path):
    nb = tmp_path / "one.ipynb"
    nb.write_text("{}")
    code, _, err = fmlab(capsys, "grade", nb, "--shard", "1/2")
    assert code == 2 and "not a folder" in err
    other = next(k for k in (1, 2) if shard_of(nb.name, 2) != k)  # the shard without it
    code, out, _ = fmlab(capsys, "grade", tmp_path, "--shard", f"{other}/2", "--out", tmp_path / "r",
                         "--gradebook", tmp_path / "g.csv")
    assert code == 0 and "0 of the 1 submissions" in out and (tmp_path / "r").is_dir()
    assert (tmp_path / "g.csv").read_text().startswith("submission,lab,status,score")


def _report(name: str, scores: tuple[float, float], error: str | None = None, lab: str = "losses"):
    if error:
        return Report(name, lab, error=error)
    return Report(name, lab, [QuestionReport(q, "t", 2, [CaseReport("a", False, s, "")])
                              for q, s in zip(("q1", "q2"), scores)])


@pytest.fixture
def results(tmp_path):
    """Two shards' results: ada and cy graded, ben failed (a grader error), eve's notebook
    unreadable, dan graded in both shards; fay is on the roster without results."""
    shards = {"s1": [_report("ada.ipynb", (1, 1)), _report("dan.ipynb", (1, 0)),
                     _report("ben.ipynb", (0, 0), "grader error: the checks file broke")],
              "s2": [_report("cy.ipynb", (1, 0.5)), _report("dan.ipynb", (1, 0)),
                     _report("eve.ipynb", (0, 0), "not valid notebook JSON")]}
    for folder, reports in shards.items():
        for r in reports:
            write_json_atomic(r.to_gradescope(), tmp_path / folder / f"{Path(r.submission).stem}.json")
    roster = tmp_path / "roster.csv"
    roster.write_text("\ufeffStudent,ID,SIS User ID,SIS Login ID,Section,Email,submission\n"
                      + "".join(f"{n.title()} X,{i},S{i},{n},A,{n}@uni.edu,{n}\n"
                                for i, n in enumerate(["ada", "ben", "cy", "dan", "eve", "fay"])))
    return tmp_path, roster


def test_the_merge_lists_missing_failed_and_duplicated_submissions(results, capsys):
    folder, roster = results
    code, out, err = fmlab(capsys, "gradebook", folder / "s1", folder / "s2", "--roster", roster,
                           "--out", folder / "book.csv")
    book = rows(folder / "book.csv")
    assert code == 1 and list(book) == ["ada.ipynb", "ben.ipynb", "cy.ipynb", "dan.ipynb",
                                        "eve.ipynb", "fay.ipynb"]
    assert {s: r["status"] for s, r in book.items()} == {
        "ada.ipynb": "graded", "ben.ipynb": "failed", "cy.ipynb": "graded",
        "dan.ipynb": "duplicate", "eve.ipynb": "not graded", "fay.ipynb": "missing"}
    assert (book["ada.ipynb"]["score"], book["ada.ipynb"]["max_score"], book["cy.ipynb"]["q2"]) == ("4.0", "4", "0.5")
    assert book["dan.ipynb"]["score"] == "" and "s1/dan.json" in book["dan.ipynb"]["error"]  # not 2.0 + 2.0
    assert book["ben.ipynb"]["score"] == "" and "checks file broke" in book["ben.ipynb"]["error"]
    assert book["eve.ipynb"]["score"] == "0.0"
    for line in ("1 missing", "fay.ipynb", "1 failed", "ben.ipynb: grader error", "1 graded more than once",
                 "dan.ipynb: graded 2 times"):
        assert line in err, err
    code, _, err = fmlab(capsys, "gradebook", folder / "s2", folder / "s2" / "cy.json", "--out", folder / "b.csv")
    assert code == 0 and len(rows(folder / "b.csv")) == 3  # one file reached twice is one result


def test_canvas_and_gradescope_files(results, capsys):
    folder, roster = results
    code, _, err = fmlab(capsys, "gradebook", folder / "s1", folder / "s2", "--roster", roster,
                         "--format", "canvas", "--assignment", "Lab 2: losses (4711)",
                         "--out", folder / "canvas.csv")
    lines = list(csv.reader(open(folder / "canvas.csv", encoding="utf-8")))
    assert code == 1 and lines[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                                      "Lab 2: losses (4711)"]
    assert lines[1] == ["Ada X", "0", "S0", "ada", "A", "4.0"]
    assert [line[5] for line in lines[1:]] == ["4.0", "", "2.5", "", "0.0", ""]  # blank: fix, merge again
    code, _, _ = fmlab(capsys, "gradebook", folder / "s1", folder / "s2", "--roster", roster,
                       "--format", "gradescope", "--out", folder / "gs.csv")
    gs = rows(folder / "gs.csv")
    assert list(next(iter(gs.values()))) == ["Name", "Email", "SID", "q1", "q2", "Total Score"]
    assert gs["Cy X"] == {"Name": "Cy X", "Email": "cy@uni.edu", "SID": "S2", "q1": "2.0",
                          "q2": "0.5", "Total Score": "2.5"}
    assert (gs["Eve X"]["q1"], gs["Eve X"]["Total Score"], gs["Fay X"]["Total Score"]) == ("0.0", "0.0", "")


def test_gradebook_errors_say_what_to_do(results, capsys, tmp_path):
    folder, roster = results
    code, _, err = fmlab(capsys, "gradebook", folder / "s1", "--format", "canvas", "--out", tmp_path / "c.csv")
    assert code == 2 and "needs --roster" in err
    write_json_atomic(_report("zed.ipynb", (1, 1), lab="cnn").to_gradescope(), folder / "s2" / "zed.json")
    code, _, err = fmlab(capsys, "gradebook", folder / "s2", "--roster", roster, "--format", "gradescope",
                         "--out", tmp_path / "g.csv")
    assert code == 2 and "several labs (cnn, losses)" in err and "--lab" in err
    code, _, err = fmlab(capsys, "gradebook", folder / "s2", "--roster", roster, "--format", "gradescope",
                         "--lab", "cnn", "--out", tmp_path / "g.csv")
    assert code == 1 and "zed.ipynb: graded but not on the roster, so not in the gradescope file" in err
    assert "6 missing" in err and "zed" not in (tmp_path / "g.csv").read_text()
    code, _, err = fmlab(capsys, "gradebook", folder / "nowhere", "--out", tmp_path / "n.csv")
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = fmlab(capsys, "gradebook", tmp_path / "empty", "--out", tmp_path / "n.csv")
    assert code == 2 and "no results of fmlab grade" in err
    (folder / "s1" / "notes.json").write_text('{"a": 1}')
    code, _, err = fmlab(capsys, "gradebook", folder / "s1", "--out", tmp_path / "s.csv")
    assert code == 1 and "not a results file" in err and "notes.json" in err
    (tmp_path / "bad_roster.csv").write_text("name,email\nA,a@x\n")
    code, _, err = fmlab(capsys, "gradebook", folder / "s2", "--roster", tmp_path / "bad_roster.csv",
                         "--out", tmp_path / "r.csv")
    assert code == 2 and "needs a 'submission' column" in err
    (tmp_path / "blank.csv").write_text("submission,name\nada,Ada\n,Ben\n")
    code, _, err = fmlab(capsys, "gradebook", folder / "s2", "--roster", tmp_path / "blank.csv",
                         "--out", tmp_path / "r.csv")
    assert code == 2 and "line 3 has no submission" in err
