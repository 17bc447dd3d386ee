"""Every lab in labs/: the master scores full marks, its student version scores zero, and each
wrong answer in tests/wrong_answers/<lab>.py loses most of its question's points (it keeps at
most half).

Generic: a new labs/NN_name.ipynb (with labs/checks/<lab>.py, labs/hidden/<lab>.py and
tests/wrong_answers/<lab>.py) is picked up without editing this file.
"""
from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fmlab.grading.assign import proof_failures, prove, write_student_versions
from fmlab.grading.grader import grade_notebook
from fmlab.grading.notebook import lab_id, read_notebook
from fmlab.grading.runner import Limits
from fmlab.grading.spec import load_module, load_questions
from fmlab.grading import checks_path

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
HIDDEN = ROOT / "labs" / "hidden"
WRONG_DIR = ROOT / "tests" / "wrong_answers"
KEEPS_AT_MOST = 0.5  # the share of a question's points a wrong answer may keep


def lab_of(master: Path) -> str:
    lab = lab_id(read_notebook(master))
    assert lab, f"{master.name} has no lab id in its metadata"
    return lab


def hidden_dir(lab: str) -> Path | None:
    return HIDDEN if (HIDDEN / f"{lab}.py").is_file() else None


@pytest.fixture(scope="module")
def proofs(tmp_path_factory):
    """Grade every master and student version once, two gradings at a time."""
    out = tmp_path_factory.mktemp("student")
    pairs = write_student_versions(ROOT / "labs", out)
    reports = {}
    with_hidden = [p for p in pairs if hidden_dir(p[2])]
    without = [p for p in pairs if not hidden_dir(p[2])]  # their test fails below, with a reason
    for group, tests in ((with_hidden, str(HIDDEN)), (without, None)):
        if group:
            reports.update(prove(group, tests, jobs=2, limits=Limits(threads=1))[1])
    return reports


@pytest.mark.parametrize("master", LABS, ids=[p.stem for p in LABS])
def test_master_scores_full_and_stub_zero(proofs, master):
    lab = lab_of(master)
    assert hidden_dir(lab) is not None, f"no hidden tests: add labs/hidden/{lab}.py"
    assert lab in proofs, f"{lab} was not graded"
    problems = proof_failures(lab, *proofs[lab])
    assert not problems, "\n".join(problems)


def _rounds(wrong: dict) -> list[dict[str, tuple[str, str]]]:
    """Group wrong answers into rounds, one per question at most, so one grading tests several."""
    rounds = []
    for qid, answers in wrong.items():
        for r, (name, src) in enumerate(answers.items()):
            if r == len(rounds):
                rounds.append({})
            rounds[r][qid] = (name, src)
    return rounds


@pytest.mark.parametrize("master", LABS, ids=[p.stem for p in LABS])
def test_wrong_answers_score_below_full(master, tmp_path):
    lab = lab_of(master)
    path = WRONG_DIR / f"{lab}.py"
    assert path.is_file(), f"add {path.relative_to(ROOT)} with WRONG = {{'q1': {{'name': source}}}}"
    module = load_module(path)
    wrong = module.WRONG
    questions = {q.id: q for q in load_questions(checks_path(lab))}
    for qid, answers in wrong.items():
        assert qid in questions, f"{path.name}: {lab} has no question {qid}"
    thin = [q for q in questions if len(wrong.get(q, {})) < 2]
    assert not thin, f"{path.name}: give at least two wrong answers for {thin}"

    nb = json.loads(master.read_text())
    jobs = []
    for r, chosen in enumerate(_rounds(wrong)):
        sub = copy.deepcopy(nb)
        for qid, (name, src) in chosen.items():
            sub["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {},
                                 "outputs": [], "source": src})
        file = tmp_path / f"round{r}.ipynb"
        file.write_text(json.dumps(sub))
        jobs.append((file, chosen))

    def grade(job):
        file, chosen = job
        return grade_notebook(file, hidden_dir(lab), limits=Limits(threads=1), only=list(chosen))

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(grade, jobs))
    kept = []
    for (file, chosen), report in zip(jobs, reports):
        assert report.error is None, report.error
        for qid, (name, _) in chosen.items():
            q = report.question(qid)
            if q.score > KEEPS_AT_MOST * q.points:
                kept.append(f"{qid}/{name} keeps {q.score:g} of {q.points:g} points: "
                            f"{q.output(True)}")
    assert not kept, "\n".join(kept)
