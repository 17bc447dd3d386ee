"""``fmlab assign labs/ --out DIR``: write student versions of the master labs and prove them.

Explained in book/instructors.md. The proof grades each master (it must score full marks) and
its student version (it must score zero) with the real grader, public and hidden cases, so a
question whose checks cannot tell a solution from a stub never reaches students.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .grader import grade_notebook
from .notebook import NotebookError, lab_id, read_notebook, student_version, write_notebook
from .report import Report
from .runner import GradingError, Limits


def write_student_versions(labs: str | Path, out: str | Path) -> list[tuple[Path, Path, str]]:
    """Write each ``labs/*.ipynb``'s student version to ``out`` (same file name).

    Returns (master, student, lab id) triples. Raises :class:`NotebookError` naming the file
    when a master has no lab id or unbalanced solution markers.
    """
    written = []
    masters = sorted(Path(labs).glob("*.ipynb"))
    if not masters:
        raise NotebookError(f"no master notebooks (*.ipynb) in {labs}")
    for master in masters:
        nb = read_notebook(master, strict=True)  # a master must follow the notebook format
        lab = lab_id(nb)
        if lab is None:
            raise NotebookError(f"{master}: no lab id; add {{'fmlab': {{'lab': '<id>'}}}} to its metadata")
        try:
            student = student_version(nb)
        except NotebookError as err:
            raise NotebookError(f"{master}: {err}") from None
        target = Path(out) / master.name
        write_notebook(student, target)
        written.append((master, target, lab))
    return written


def proof_failures(lab: str, master: Report, student: Report) -> list[str]:
    """What keeps a lab from being proved: a master below full marks, a stub above zero."""
    problems = []
    for report, want in ((master, "full"), (student, "zero")):
        if report.error:
            problems.append(f"lab {lab}: the {'master' if want == 'full' else 'student version'} "
                            f"could not be graded: {report.error}")
        for q in report.questions:
            bad = q.score < q.points if want == "full" else q.score > 0
            if bad:
                which = "master" if want == "full" else "student version (stub)"
                cases = "; ".join(f"{c.name}: {c.message}" for c in q.cases
                                  if (c.score < 1 if want == "full" else c.score > 0))
                problems.append(f"lab {lab}, {q.id}: the {which} scores {q.score:g}/{q.points:g}, "
                                f"expected {want} ({cases})")
    return problems


def prove(pairs: list[tuple[Path, Path, str]], tests: str | None, jobs: int = 2,
          limits: Limits | None = None) -> tuple[list[str], dict[str, tuple[Report, Report]]]:
    """Grade every master and student version; return the problems and the reports per lab."""
    limits = limits or Limits(threads=1 if jobs > 1 else None)

    def grade(path: Path, lab: str) -> Report:
        return grade_notebook(path, tests, lab=lab, limits=limits)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        # The masters first (the longer gradings): a student version's preparation then finds
        # what its checks cached for the master (a reference model) instead of computing it too
        masters = [pool.submit(grade, m, lab) for m, _, lab in pairs]
        stubs = [pool.submit(grade, s, lab) for _, s, lab in pairs]
        futures = {lab: (fm, fs) for (_, _, lab), fm, fs in zip(pairs, masters, stubs)}
        reports = {}
        problems = []
        for lab, (fm, fs) in futures.items():
            try:
                reports[lab] = (fm.result(), fs.result())
            except GradingError as err:
                problems.append(f"lab {lab}: the grader could not run: {err}")
                continue
            problems += proof_failures(lab, *reports[lab])
    return problems, reports


def assign(labs: str | Path, out: str | Path, prove: bool = True, tests: str | None = None) -> bool:
    """Write the student versions; unless ``prove=False``, prove each lab. True when all is well."""
    try:
        pairs = write_student_versions(labs, out)
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    for master, student, lab in pairs:
        print(f"{master} -> {student}  (lab {lab})")
    if not prove:
        return True
    if tests is None:
        print("note: no hidden tests folder; proving with the public tests only", file=sys.stderr)
    problems, reports = _prove(pairs, tests)
    for lab, (m, s) in reports.items():
        print(f"lab {lab}: master {m.score:g}/{m.max_score:g} ({m.execution_time:.0f} s), "
              f"student version {s.score:g}/{s.max_score:g}")
    for p in problems:
        print(f"PROOF FAILED: {p}", file=sys.stderr)
    if not problems:
        print(f"proved {len(pairs)} lab(s): every master scores full marks, every stub scores zero")
    return not problems


_prove = prove  # `assign`'s argument shadows the function's name
