"""Grading a class across machines: the shard partition, and one gradebook merged from results.

Explained in book/instructors.md ("A class across machines"). ``fmlab grade FOLDER --shard
K/N`` grades the submissions whose file name falls in shard K of N (:func:`shard_of`: a SHA-256
of the name, so every machine computes the same partition whatever else it sees); ``fmlab
gradebook RESULTS...`` reads the results files the shards wrote (Gradescope's results.json,
whose ``extra_data`` names the submission, its lab and its status) and writes one table: a row
per submission, a column per question and the total, and a status that says which submissions
are missing, failed (a grader error: regrade them) or were graded more than once.
"""
from __future__ import annotations

import csv
import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime import atomic_write

GRADED, NOT_GRADED, FAILED = "graded", "not graded", "failed"  # what a results file says
MISSING, DUPLICATE = "missing", "duplicate"  # what the merge finds
SCORED = (GRADED, NOT_GRADED)  # a row whose score counts (a notebook that cannot be read scores 0)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, K counting from 1: ``--shard 1/4`` ... ``--shard 4/4``.

    >>> parse_shard("2/4")
    (2, 4)
    """
    k, sep, n = text.partition("/")
    whole = lambda part: part.strip().isascii() and part.strip().isdecimal()  # not '²'
    if not sep or not whole(k) or not whole(n):
        raise ValueError(f"--shard takes K/N, two whole numbers such as 1/4 (got {text!r})")
    k, n = int(k), int(n)
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K counts from 1 to N (for N = 4: 1/4, 2/4, 3/4, 4/4)")
    return k, n


def shard_of(name: str, n: int) -> int:
    """The shard (1..n) of a submission, from its file name alone: the first 8 bytes of the
    SHA-256 of the name (NFC-normalized UTF-8) modulo n, plus 1. Python's ``hash()`` is salted
    per process; a position in a sorted list moves when a file is added on one machine only."""
    digest = hashlib.sha256(unicodedata.normalize("NFC", name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def submissions_in(folder: str | Path) -> list[Path]:
    """The notebooks ``fmlab grade FOLDER`` grades: ``*.ipynb`` not hidden, sorted by name."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if not p.name.startswith("."))


def in_shard(paths: list[Path], k: int, n: int) -> list[Path]:
    return [p for p in paths if shard_of(p.name, n) == k]


@dataclass
class Row:
    """One submission's line of the gradebook."""
    submission: str
    status: str
    lab: str = ""
    score: float | None = None
    max_score: float | None = None
    questions: dict[str, float] = field(default_factory=dict)
    error: str = ""
    flags: str = ""
    sources: list[str] = field(default_factory=list)  # the results files it came from


def status_of(error: str | None) -> str:
    """A report's status from its error: none, a grader error (``grade_many``'s prefix), or a
    notebook that could not be graded (corrupt, no lab id), which scores 0."""
    if not error:
        return GRADED
    return FAILED if error.startswith("grader error") else NOT_GRADED


def row_from_results(data: dict, source: str = "") -> Row:
    """A gradebook row from a results dict (``Report.to_gradescope``, or its JSON file)."""
    extra = data.get("extra_data") if isinstance(data, dict) else None
    if not isinstance(extra, dict) or not extra.get("submission") or not isinstance(data.get("tests"), list):
        raise ValueError("not a results file of fmlab grade (it has no extra_data.submission "
                         "or no tests list)")
    flags = extra.get("flags") or {}
    return Row(submission=str(extra["submission"]), lab=str(extra.get("lab") or ""),
               status=extra.get("status") or status_of(extra.get("error")),
               score=data.get("score", 0.0), max_score=extra.get("max_score"),
               questions={str(t.get("number", t.get("name"))): t.get("score") for t in data["tests"]},
               error=(extra.get("error") or "")[:300],
               flags="; ".join(f"{q}: {', '.join(f)}" for q, f in flags.items())[:500],
               sources=[source] if source else [])


def results_files(paths: list[str | Path]) -> list[Path]:
    """The ``*.json`` files in the folders given (and below: one subfolder per downloaded
    artifact) and the files given; each file once however it was reached."""
    found: dict[Path, Path] = {}
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.json") if not f.name.startswith("."))
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder of results")
        for f in files:
            found.setdefault(f.resolve(), f)
    return list(found.values())


def read_results(paths: list[str | Path]) -> tuple[list[Row], list[str]]:
    """Rows from the results files under ``paths``, and a line for each file that is not one."""
    rows, unreadable = [], []
    for f in results_files(paths):
        try:
            rows.append(row_from_results(json.loads(f.read_text(encoding="utf-8")), str(f)))
        except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
            unreadable.append(f"{f}: {err}")
    return rows, unreadable


def _notebook_name(name: str) -> str:
    return name if name.endswith(".ipynb") else f"{name}.ipynb"


def merge(rows: list[Row], expected: list[str] | None = None) -> list[Row]:
    """One row per submission, sorted by name. A submission found in more than one results
    file becomes a ``duplicate`` row without a score (never a sum, never a silent choice); an
    expected submission without results becomes a ``missing`` row."""
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.submission, []).append(r)
    merged = []
    for name, found in by_name.items():
        if len(found) == 1:
            merged.append(found[0])
        else:
            sources = [s for r in found for s in r.sources]
            merged.append(Row(name, DUPLICATE, lab=found[0].lab, sources=sources,
                              error=f"graded {len(found)} times: {', '.join(sources)}"[:300]))
    for name in expected or []:
        if _notebook_name(name) not in by_name:
            merged.append(Row(_notebook_name(name), MISSING, error="no results file"))
    return sorted(merged, key=lambda r: r.submission)


ROSTER_KEYS = {  # our name: the headers accepted (a Canvas gradebook export's included)
    "submission": ("submission", "notebook", "file"),
    "name": ("name", "student"), "email": ("email",), "canvas_id": ("id", "canvas id"),
    "sid": ("sid", "sis user id", "student id"), "login": ("sis login id", "login"),
    "section": ("section", "sections"),
}


def read_roster(path: str | Path) -> list[dict[str, str]]:
    """The students of a roster CSV, one dict each with the keys of ``ROSTER_KEYS`` (blank
    where the file has no such column). A ``submission`` column (the notebook's file name, with
    or without ``.ipynb``) is required; the rest identify the student in Canvas or Gradescope."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM
        reader = csv.DictReader(f)
        header = {h.strip().lower().replace("_", " "): h for h in reader.fieldnames or []}
        columns = {key: next((header[a] for a in aliases if a in header), None)
                   for key, aliases in ROSTER_KEYS.items()}
        if columns["submission"] is None:
            raise ValueError(f"{path}: the roster needs a 'submission' column (each student's "
                             f"notebook file name); its columns are {list(reader.fieldnames or [])}")
        students = [{k: (line.get(c) or "").strip() if c else "" for k, c in columns.items()}
                    for line in reader]
    blank = [str(i) for i, s in enumerate(students, 2) if not s["submission"]]
    if blank:
        raise ValueError(f"{path}: line {', '.join(blank)} has no submission: write the notebook's "
                         f"file name (for a student who submitted nothing, any name no notebook "
                         f"has, such as their login: they are listed as missing)")
    names = [_notebook_name(s["submission"]) for s in students]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: submissions listed more than once: {', '.join(twice)}")
    for s, n in zip(students, names):
        s["submission"] = n
    return students


def _number(x) -> str:
    return "" if x is None else str(x)


def _scores(r: Row, qualify: bool) -> dict[str, float]:
    """A row's question scores by column name: ``q1``, or ``lab:q1`` when labs are mixed."""
    return {(f"{r.lab}:{q}" if qualify else q): s for q, s in r.questions.items()}


def table(rows: list[Row], fmt: str = "fmlab", roster: list[dict] | None = None,
          assignment: str = "") -> tuple[list[list[str]], list[str]]:
    """The CSV's lines for ``fmt``, and notes on rows it left out.

    - ``fmlab``: submission, lab, status, score, max_score, a column per question (``lab:q1``
      when the rows span several labs), error, flags. Only graded and not-graded rows (a
      notebook that could not be read scores 0) have a score.
    - ``canvas``: Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section
      and one assignment column named ``assignment``. (Source: the Ohio State University's
      guide to importing a CSV into Canvas's gradebook, teaching.resources.osu.edu/toolsets/
      carmencanvas/guides/calculating-final-grades/import-csv-file-carmen-grades: the student
      is matched by name, ID or SIS User ID; then SIS Login ID, Section, and the assignment's
      name as its column; a new name creates an assignment; an exported column's header,
      "Name (id)", updates that assignment.)
    - ``gradescope``: Name, Email, SID, a column per question, Total Score. (Gradescope keys
      its roster by email and name: help.gradescope.com, "Adding Students and Staff".)

    Canvas and Gradescope rows come from the roster, in its order, with a blank score where the
    submission is missing, failed or duplicated: fix those and merge again.
    """
    qualify = len({r.lab for r in rows if r.lab}) > 1
    qids: list[str] = []
    for r in rows:
        qids += [q for q in _scores(r, qualify) if q not in qids]
    on_roster = {s["submission"] for s in roster or []}
    notes = [] if roster is None else [
        f"{r.submission}: graded but not on the roster" + ("" if fmt == "fmlab" else
                                                           f", so not in the {fmt} file")
        for r in rows if r.submission not in on_roster]
    if fmt == "fmlab":
        lines = [["submission", "lab", "status", "score", "max_score", *qids, "error", "flags"]]
        for r in rows:
            scored, by_q = r.status in SCORED, _scores(r, qualify)
            lines.append([r.submission, r.lab, r.status, _number(r.score if scored else None),
                          _number(r.max_score if scored else None),
                          *[_number(by_q.get(q)) for q in qids], r.error, r.flags])
        return lines, notes
    by_name = {r.submission: r for r in rows if r.status in SCORED}
    lines = []
    for s in roster or []:
        r = by_name.get(s["submission"])
        total = "" if r is None else _number(r.score)
        if fmt == "canvas":
            lines.append([s["name"], s["canvas_id"], s["sid"], s["login"], s["section"], total])
        else:  # a notebook that could not be read scores 0 on every question
            by_q = {} if r is None else _scores(r, qualify)
            per_q = [_number(by_q.get(q, 0.0 if r.status == NOT_GRADED else None)) if r else ""
                     for q in qids]
            lines.append([s["name"], s["email"], s["sid"], *per_q, total])
    head = (["Student", "ID", "SIS User ID", "SIS Login ID", "Section", assignment]
            if fmt == "canvas" else ["Name", "Email", "SID", *qids, "Total Score"])
    return [head] + lines, notes


PROBLEMS = {MISSING: "missing (no results file: was its shard graded?)",
            FAILED: "failed (a grader error: grade them again)",
            DUPLICATE: "graded more than once (keep one results file, then merge again)",
            NOT_GRADED: "not graded, scored 0 (the notebook could not be graded)"}


def summary(rows: list[Row]) -> tuple[str, str]:
    """What ``fmlab gradebook`` prints on stderr (the submissions of each kind of problem, with
    their errors) and the count of rows by status."""
    text = ""
    for status, what in PROBLEMS.items():
        bad = [r for r in rows if r.status == status]
        if bad:
            text += f"{len(bad)} {what}:\n" + "".join(
                f"  {r.submission}" + (f": {r.error}" if r.error and status != MISSING else "") + "\n"
                for r in bad)
    counts = [(s, sum(r.status == s for r in rows)) for s in (GRADED, *PROBLEMS)]
    return text, ", ".join(f"{n} {s}" for s, n in counts if n)


def write_csv(lines: list[list[str]], path: str | Path) -> None:
    """Write the lines atomically (never half a gradebook), UTF-8."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(lines)

    atomic_write(path, write)
