"""Grading reports: Gradescope's results.json, a readable table, and a CSV gradebook.

Explained in book/instructors.md. A question's score is ``points × share(case scores)`` over its
public and hidden cases (:func:`share`: their mean, halved when a case found a mistake); each
question is one entry of ``tests[]``, whose ``output`` lists each case with its verdict. Hidden
cases show their name and verdict; their messages (which may quote expected values) only with
``show_hidden=True``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime import atomic_write
from .gradebook import row_from_results, status_of, table, write_csv


def share(scores: list[float], scale: list[bool] | None = None) -> float:
    """The share of a question's points its cases earn: the mean of their scores (each in
    [0, 1]), halved when any case found a mistake (scored below 1 without being a ``scale``
    case, whose score is a trained model's result read off a scale). A function that is wrong
    on one input is wrong, so it keeps less than half the question's points, whatever the other
    cases say.

    >>> share([1, 1, 1, 1]), share([1, 1, 1, 0]), share([1, 0.5]), share([1, 0.5], [False, True])
    (1.0, 0.375, 0.375, 0.75)
    """
    if not scores:
        return 0.0
    scale = scale or [False] * len(scores)
    mean = sum(scores) / len(scores)
    mistake = any(s < 1 and not on_scale for s, on_scale in zip(scores, scale))
    return mean / 2 if mistake else mean


@dataclass
class CaseReport:
    name: str
    hidden: bool
    score: float
    message: str
    scale: bool = False  # a score read off a scale (spec.Result.scale)

    def line(self, show_hidden: bool) -> str:
        mark = "pass" if self.score >= 1 else ("part" if self.score > 0 else "FAIL")
        label = f"hidden: {self.name}" if self.hidden else self.name
        text = f"[{mark}] {label}"
        if (self.score < 1 or self.message not in ("", "ok")) and (show_hidden or not self.hidden):
            text += f": {self.message}"
        elif self.score < 1:
            text += " (details are not shown for hidden tests)"
        return text


@dataclass
class QuestionReport:
    id: str
    title: str
    points: float
    cases: list[CaseReport]

    @property
    def score(self) -> float:
        return round(self.points * share([c.score for c in self.cases],
                                         [c.scale for c in self.cases]), 4)

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.score >= 1 for c in self.cases)

    def output(self, show_hidden: bool) -> str:
        return "\n".join(c.line(show_hidden) for c in self.cases)


@dataclass
class Report:
    submission: str
    lab: str | None
    questions: list[QuestionReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why the notebook could not be graded at all
    execution_time: float = 0.0
    children: int = 0
    # for the instructor only: what the source scan could not follow, by question
    flags: dict[str, list[str]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return round(float(sum(q.score for q in self.questions)), 4)

    @property
    def max_score(self) -> float:
        return sum(q.points for q in self.questions)

    def question(self, qid: str) -> QuestionReport:
        return next(q for q in self.questions if q.id == qid)

    def summary(self) -> str:
        lines = []
        if self.error:
            lines.append(f"Not graded: {self.error}")
        if self.notes:
            lines.append("Notes on the notebook:")
            lines += [f"  - {n}" for n in self.notes]
        return "\n".join(lines)

    def to_gradescope(self, show_hidden: bool = False) -> dict:
        """The results.json dict (Gradescope's autograder format)."""
        tests = [{
            "name": f"{q.id}: {q.title}", "number": q.id, "score": q.score, "max_score": q.points,
            "status": "passed" if q.passed else "failed", "output": q.output(show_hidden),
            "visibility": "visible",
        } for q in self.questions]
        return {
            "score": self.score, "execution_time": round(self.execution_time, 2),
            "output": self.summary() or f"{self.lab}: graded {len(tests)} questions",
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests,
            "extra_data": {"lab": self.lab, "max_score": self.max_score,
                           "submission": self.submission, "error": self.error,
                           "status": status_of(self.error),  # what fmlab gradebook merges
                           # the instructor's view only: a student's CI run keeps results.json
                           **({"flags": self.flags} if show_hidden else {})},
        }

    def table(self, show_hidden: bool = False) -> str:
        """A plain-text table for the terminal (and the CI log)."""
        title = f"{self.submission}  (lab {self.lab or '?'})"
        rows = [title, "-" * max(len(title), 60)]
        if self.summary():
            rows.append(self.summary())
        width = max([len(f"{q.id} {q.title}") for q in self.questions] + [20])
        for q in self.questions:
            passed = sum(c.score >= 1 for c in q.cases)
            rows.append(f"{q.id + ' ' + q.title:<{width}}  {q.score:6.2f} / {q.points:<5g} "
                        f"{passed}/{len(q.cases)} cases passed")
            rows += [f"    {c.line(show_hidden)}" for c in q.cases if c.score < 1]
        rows.append(f"{'total':<{width}}  {self.score:6.2f} / {self.max_score:<5g} "
                    f"({self.execution_time:.1f} s)")
        if show_hidden:  # the instructor's view: a student's CI log shows the plain table
            for qid, reasons in self.flags.items():
                rows.append(f"FLAGGED for review {qid}: {'; '.join(reasons)}")
        return "\n".join(rows)


def write_json_atomic(data: dict, path: str | Path) -> None:
    """Write JSON to ``path`` atomically (never half-written): :func:`fmlab.runtime.atomic_write`."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_gradebook(reports: list[Report], path: str | Path) -> None:
    """One row per submission, in the order given (``fmlab grade``'s: by file name): its
    status, score, max score, each question's score, any error and the flags. The same table
    as ``fmlab gradebook`` merges from the results files (:mod:`fmlab.grading.gradebook`)."""
    rows = [row_from_results(r.to_gradescope(show_hidden=True)) for r in reports]
    write_csv(table(rows)[0], path)
