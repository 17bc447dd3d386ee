"""``fmlab grade``: score a submitted notebook, with the student's code in a child process.

Explained in book/instructors.md. The parent (this module) reads the notebook, loads the public
checks and the hidden cases, prepares each case's inputs, lets :mod:`fmlab.grading.runner` run
the student's side in a child, and grades what comes back, here, with ``question.grade``. The
child never sees a reference value or the hidden tests file; what it returns is plain data.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import math
import sys
import threading
import time
import traceback
from pathlib import Path

from .check import checks_path
from .notebook import NotebookError, code_cells, lab_id, read_notebook
from .report import CaseReport, QuestionReport, Report
from .runner import Entry, GradingError, Limits, isolation, run_in_children
from .messages import cores
from .notebook import schema_problem
from .scan import Notebook, notebook_flags, scan
from .spec import (Question, Result, case_name, declared, load_module, load_questions,
                   needs_processes, seeded)


def load_hidden(tests: str | Path | None, lab: str, questions: list[Question]) -> dict[str, list[dict]]:
    """``HIDDEN`` from ``<tests>/<lab>.py``, checked against the lab's question ids."""
    if tests is None:
        return {}
    path = Path(tests) / f"{lab}.py"
    if not Path(tests).is_dir():
        raise GradingError(f"--tests {tests} is not a folder")
    if not path.is_file():
        raise GradingError(f"no hidden tests for lab {lab!r} in {tests} (expected {path.name})")
    try:
        hidden = getattr(load_module(path), "HIDDEN", None)
    except Exception as err:  # noqa: BLE001 - the instructor's file: say what broke
        raise GradingError(f"{path} failed to import: {type(err).__name__}: {err}") from err
    if not isinstance(hidden, dict):
        raise GradingError(f"{path} must define HIDDEN = {{'q1': [case, ...], ...}}")
    unknown = set(hidden) - {q.id for q in questions}
    if unknown:
        raise GradingError(f"{path}: HIDDEN names questions the lab does not have: {sorted(unknown)}")
    return hidden


def _beside(submission: Path, needed: list[Path]) -> list[str]:
    """What else sits beside the submission (a classmate's notebook, in a folder graded one
    file at a time): the whole folder, or, where the grading itself needs something in it (the
    checks, fmlab, Python), every notebook in it."""
    folder = submission.parent
    if any(n == folder or folder in n.parents for n in needed):
        return [str(p) for p in folder.glob("*.ipynb")]
    return [str(folder)]


def _protected_paths(tests, results_path, submission: Path, checks: Path,
                     data: tuple[str, ...], private: tuple[str, ...]) -> list[str]:
    """What the student's code may not read: the hidden tests, the results, the submission and
    what is beside it, what the checks declare ``PRIVATE`` (the masters), and every dataset
    they do not declare in ``DATA`` (with the data cache)."""
    from ..data import NAMES, files
    from ..runtime import data_dir

    needed = [checks.resolve(), Path(__file__).resolve().parents[1], Path(sys.prefix).resolve(),
              Path(sys.base_prefix).resolve(), data_dir().resolve()]
    paths = [str(submission), str(Path(results_path).resolve()) if results_path else ""]
    paths += _beside(submission, needed)
    if tests is not None:
        paths.append(str(Path(tests).resolve()))
    paths.append(str(data_dir()))
    paths += [str(f) for name in NAMES if name not in data for f in files(name)]
    paths += [str(Path(p).resolve()) for pattern in private
              for p in glob.glob(str(checks.resolve().parent / pattern))]
    return [p for p in paths if p]


def _grade_case(q: Question, e: Entry) -> Result:
    if e.error is not None:
        return Result.fail(e.error)
    try:
        with seeded():  # the same random state as the child's run of this case
            result = q.grade(e.case, e.got)
    except Exception as err:  # noqa: BLE001 - odd data from the student can break a reference
        tb = traceback.extract_tb(err.__traceback__)
        where = f" (grader line {tb[-1].lineno})" if tb else ""
        return Result.fail(f"the result could not be checked: {type(err).__name__}: {err}{where}")
    if not isinstance(result, Result) or not isinstance(result.score, (int, float)) or math.isnan(result.score):
        return Result.fail(f"the checks file returned {result!r} instead of a Result")
    return Result(min(max(float(result.score), 0.0), 1.0), str(result.message), result.scale is True)


_CHECKS: dict[tuple[str, bytes], object] = {}
_CHECKS_LOCK = threading.Lock()


def _checks_module(checks: Path):
    """The checks module, executed once per file content in this process, so that what it
    caches (a reference model that ``prepare`` trains: up to 1.3 s of CPU time per grading for
    this course's labs) is computed once for all the submissions a grader grades, not for each.
    A checks file edited between two gradings is loaded again."""
    path = Path(checks).resolve()
    try:
        key = (str(path), hashlib.sha256(path.read_bytes()).digest())
    except OSError:
        return load_module(checks)  # which says what is wrong with the path
    with _CHECKS_LOCK:
        if key not in _CHECKS:
            _CHECKS[key] = load_module(checks)
        return _CHECKS[key]


def _load_lab(checks: Path, tests, lab: str, only: list[str] | None):
    """The lab's questions (those in ``only``), hidden cases, the ``DATA`` and ``PRIVATE`` its
    checks declare, and whether they declare ``PROCESSES``."""
    try:
        module = _checks_module(checks)
        questions = load_questions(checks, module)
        _, *needs = declared(module, checks)
        processes = needs_processes(module, checks)
    except (ValueError, ImportError, SyntaxError, FileNotFoundError) as err:
        raise GradingError(f"the checks file {checks} is broken: {type(err).__name__}: {err}") from err
    hidden = load_hidden(tests, lab, questions)
    if only:
        unknown = set(only) - {q.id for q in questions}
        if unknown:
            raise GradingError(f"lab {lab!r} has no question(s) {sorted(unknown)}")
        questions = [q for q in questions if q.id in only]
    return questions, hidden, needs, processes


def _processes_possible(lab: str) -> None:
    """A lab whose cases start processes (``PROCESSES``) is graded only behind a kernel
    boundary: the audit hook alone refuses processes and sockets."""
    if not isolation().processes_allowed:
        raise GradingError(
            f"lab {lab!r} starts processes that talk to each other over 127.0.0.1, which this "
            f"grader allows only behind a kernel boundary, and it has none here: grade as root "
            f"(sudo \"$(which fmlab)\" grade ...) or where unprivileged user namespaces are "
            f"allowed. check() in the notebook runs the public tests without the grader.")


def _entries(questions: list[Question], hidden: dict, limits: Limits, checks: Path,
             prepare: bool) -> list[Entry]:
    """One entry per case, public then hidden, with its inputs prepared (when it will run)."""
    entries: list[Entry] = []
    for q in questions:
        try:
            cases = [(c, False) for c in q.cases()] + [(c, True) for c in hidden.get(q.id, [])]
            for i, (case, is_hidden) in enumerate(cases):
                timeout = limits.case_timeout or q.timeout
                prepared = q.prepared(case) if prepare else case
                entries.append(Entry(len(entries), q.id, case_name(case, i), is_hidden, prepared, timeout))
        except Exception as err:  # noqa: BLE001
            raise GradingError(f"{checks}: preparing the cases of {q.id} failed: {type(err).__name__}: {err}") from err
    return entries


def _lab_of(nb, lab: str | None, report: Report) -> str | None:
    """The lab to grade as (``--lab``, else the notebook's own id), noting what is odd."""
    stored = lab_id(nb) if nb else None
    problem = schema_problem(nb) if nb else None
    if problem:
        report.notes.append(f"the notebook does not follow the notebook format ({problem}); it was "
                            "graded anyway. Open it in Jupyter or Colab and save it again.")
    if lab and stored and lab != stored:
        report.notes.append(f"graded as lab {lab!r} (--lab); the notebook says {stored!r}")
    return lab or stored


def _checks_of(submission: Path, lab: str | None, checks, report: Report) -> Path | None:
    """The checks file to grade with, or None with ``report.error`` saying why there is none."""
    if lab is None:
        report.error = report.error or (
            f"{submission.name} does not say which lab it is (no 'fmlab': {{'lab': ...}} in its "
            "metadata). Start from the notebook you were given, or grade with --lab ID.")
        return None
    if checks is None:
        try:
            checks = checks_path(lab)
        except (FileNotFoundError, ValueError) as err:
            report.error = f"the notebook's lab id is not one of this course's labs: {err}"
            return None
    return Path(checks)


def grade_notebook(submission: str | Path, tests: str | Path | None = None, *, lab: str | None = None,
                   checks: str | Path | None = None, limits: Limits | None = None,
                   only: list[str] | None = None, results_path: str | Path | None = None,
                   protect: list[str | Path] = ()) -> Report:
    """Grade one submission; never raises for anything the submission does.

    Raises :class:`GradingError` only when the grader itself cannot run (a broken checks or
    hidden-tests file, a child that cannot start). ``protect``: more paths the student's code
    may not read (e.g. the folder of everyone's submissions).
    """
    limits = limits or Limits()
    submission = Path(submission).resolve()
    t0 = time.monotonic()
    report = Report(submission=submission.name, lab=lab)
    try:
        nb = read_notebook(submission)
    except NotebookError as err:
        nb, report.error = None, str(err)
    report.lab = lab = _lab_of(nb, lab, report)
    checks = _checks_of(submission, lab, checks, report)
    if checks is None:
        report.execution_time = time.monotonic() - t0
        return report
    questions, hidden, needs, processes = _load_lab(checks, tests, lab, only)
    entries = _entries(questions, hidden, limits, checks, prepare=nb is not None)

    by_id = {q.id: q for q in questions}
    if nb is not None:
        _scan(code_cells(nb), questions, entries, report)

    def grade(e: Entry) -> None:  # as each result arrives; the parent then drops it
        e.result = _grade_case(by_id[e.qid], e)

    if nb is not None:
        if processes:
            _processes_possible(lab)
        deadline = t0 + limits.total_timeout
        outcome = run_in_children(entries, code_cells(nb), checks.resolve(), limits,
                                  _protected_paths(tests, results_path, submission, checks, *needs)
                                  + [str(Path(p).resolve()) for p in protect], deadline, grade)
        report.notes += outcome.notes
        report.children = outcome.children
    else:
        for e in entries:
            e.error = report.error
    for e in entries:  # what did not come back (its error may have grown since)
        if e.result is None or e.error is not None:
            grade(e)
    for q in questions:
        report.questions.append(QuestionReport(
            q.id, q.title, q.points,
            [CaseReport(e.name, e.hidden, *_astuple(e.result)) for e in entries if e.qid == q.id]))
    report.execution_time = time.monotonic() - t0
    return report


def _scan(cells: list[str], questions: list[Question], entries: list[Entry], report: Report) -> None:
    """The parent's reading of the source (:mod:`fmlab.grading.scan`): a question whose code
    names a forbidden reference fails without running; what the scan cannot follow is flagged
    for the instructor."""
    try:
        nb = Notebook(cells)  # parsed once for every question
        threads = notebook_flags(nb)
    except Exception as err:  # noqa: BLE001 - odd source must not stop the grading
        report.flags["notebook"] = [f"the source could not be scanned ({type(err).__name__})"]
        return
    if threads:
        report.flags["notebook"] = threads
    for q in questions:
        try:
            found = scan(nb, q.requires, q.forbid, q.id)
        except Exception as err:  # noqa: BLE001 - odd source must not stop the grading
            report.flags[q.id] = [f"the source could not be scanned ({type(err).__name__})"]
            continue
        if found.flags:
            report.flags[q.id] = found.flags
        if found.problems:
            for e in entries:
                if e.qid == q.id:
                    e.done, e.error = True, found.problems[0]


def _astuple(r: Result) -> tuple[float, str, bool]:
    return r.score, r.message, r.scale


def grade_many(submissions: list[Path], jobs: int = 1, **kwargs) -> list[Report]:
    """Grade several submissions, ``jobs`` at a time (each in its own child process), at most
    one per core: each child runs its own torch thread."""
    from concurrent.futures import ThreadPoolExecutor

    limits = dataclasses.replace(kwargs.pop("limits", None) or Limits())  # the caller's stays as it was
    if jobs > cores():
        print(f"fmlab grade: --jobs {jobs} is more than the {cores()} cores this process may use; "
              f"grading {cores()} at a time", file=sys.stderr)
        jobs = cores()
    folders = sorted({str(Path(p).resolve().parent) for p in submissions})

    def one(path: Path) -> Report:
        try:  # nobody reads the other submissions
            return grade_notebook(path, limits=limits, protect=folders, **kwargs)
        except GradingError as err:
            return Report(submission=path.name, lab=kwargs.get("lab"), error=f"grader error: {err}")

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        return list(pool.map(one, submissions))
