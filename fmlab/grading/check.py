"""``check("q1")``: a lab's public tests, run inside the student's own notebook (advisory).

Explained in book/instructors.md. The score that counts comes from ``fmlab grade``, which runs
the student's code in a separate process; this check only helps while working.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .messages import describe_error
from .report import share
from .spec import NotData, Question, Result, case_name, load_questions, seeded, to_data

GRADING_ENV = "FMLAB_GRADING"


def checks_path(lab: str) -> Path:
    """The public checks file of the lab with id ``lab``, shipped inside the fmlab package:
    the package ``fmlab.checks`` is the folder ``labs/checks`` (``package-dir`` in
    pyproject.toml; labs/README.md says what else ``labs/`` holds)."""
    if not lab.replace("_", "").isalnum():
        raise ValueError(f"lab ids are letters, digits and underscores, got {lab!r}")
    path = Path(str(resources.files("fmlab.checks").joinpath(f"{lab}.py")))
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.py") if not p.stem.startswith("_"))
        raise FileNotFoundError(f"no lab called {lab!r}; the labs are: {', '.join(known)}")
    return path


@dataclass
class CheckReport:
    question: str
    results: list[tuple[str, Result]]

    @property
    def score(self) -> float:
        return share([r.score for _, r in self.results], [r.scale for _, r in self.results])

    def __repr__(self) -> str:  # what a notebook shows as the cell's value
        return f"{self.question}: {sum(r.passed for _, r in self.results)}/{len(self.results)} public tests passed"


def run_case(question: Question, ns: dict, case: dict) -> Result:
    """Run one case in this process: the student's code, then the grader's check."""
    missing = [name for name in question.requires if name not in ns]
    if missing:
        return Result.fail(f"define {', '.join(missing)} first (run the cell that defines it)")
    from .forbid import blocked, static_problems

    delegated = [p for name in question.requires for p in static_problems(ns[name], question.forbid, question.id)]
    if delegated:
        return Result.fail(delegated[0])
    try:
        with seeded(), blocked(question.forbid, question.id):
            got = to_data(question.run(ns, case))
    except NotData as err:
        return Result.fail(f"your function returned {err}; return tensors, numbers, lists or dicts")
    except Exception as err:  # the student's code failed: say how and where
        return Result.fail(describe_error(err))
    try:
        with seeded():
            return question.grade(case, got)
    except Exception as err:
        return Result.fail(f"the result could not be checked: {type(err).__name__}: {err}")


def checker(lab: str):
    """Return ``check(qid)`` for ``lab``; call it in the lab notebook after each exercise."""
    questions = {q.id: q for q in load_questions(checks_path(lab))}

    def check(qid: str, ns: dict | None = None) -> CheckReport | None:
        if os.environ.get(GRADING_ENV):
            return None  # while grading, the grader runs the tests itself
        if qid not in questions:
            raise KeyError(f"{lab} has no question {qid!r}; it has {', '.join(questions)}")
        q = questions[qid]
        if ns is None:
            ns = inspect.currentframe().f_back.f_globals
        results = [(case_name(c, i), run_case(q, ns, q.prepared(c))) for i, c in enumerate(q.cases())]
        print(f"{qid} ({q.title}, {q.points:g} points): public tests")
        for name, r in results:
            mark = "pass" if r.passed else ("part" if r.score > 0 else "FAIL")
            print(f"  [{mark}] {name}" + ("" if r.passed else f": {r.message}"))
        report = CheckReport(qid, results)
        print(f"  {report!r}. Hidden tests check more cases when your lab is graded.")
        return report

    check.questions = questions
    return check
