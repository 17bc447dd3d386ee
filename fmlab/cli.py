"""The ``fmlab`` command: ``fmlab grade``, ``fmlab gradebook``, ``fmlab assign``, ``fmlab data``,
``fmlab bench``.

``grade``, ``gradebook`` and ``assign`` are explained in book/instructors.md; ``bench`` runs a
benchmark of benchmarks/ from a checkout. Exit status: 0 when the command did its job (for
``grade``: whatever the score, unless ``--min-score`` is given and not reached, then 1; for
``gradebook``: 1 when a submission is missing, failed or graded twice, the table written all
the same); 2 when the grader itself could not run (a broken checks file, a missing
hidden-tests file, bad arguments).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _limits(args):
    from .grading.runner import Limits

    limits = Limits(memory_mb=args.memory_mb, total_timeout=args.total_timeout, threads=args.threads)
    if args.timeout is not None:
        limits.case_timeout = limits.cell_timeout = args.timeout
    return limits


def _shard(text: str) -> tuple[int, int]:
    from .grading.gradebook import parse_shard

    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_grade(args) -> int:
    from .grading.grader import grade_many, grade_notebook
    from .grading.gradebook import in_shard, submissions_in
    from .grading.report import write_gradebook, write_json_atomic
    from .grading.runner import GradingError

    target = Path(args.submission)
    only = args.questions.split(",") if args.questions else None
    common = dict(tests=args.tests, lab=args.lab, checks=args.checks, only=only)
    if args.tests is None:
        print("note: no --tests folder given; grading with the public tests only", file=sys.stderr)
    if args.shard and not target.is_dir():
        print(f"error: --shard splits a folder of submissions; {target} is not a folder",
              file=sys.stderr)
        return 2
    if target.is_dir():
        subs = submissions_in(target)
        if not subs:
            print(f"error: no .ipynb files in {target}", file=sys.stderr)
            return 2
        if args.shard:
            k, n = args.shard
            everything, subs = subs, in_shard(subs, k, n)
            print(f"shard {k}/{n}: {len(subs)} of the {len(everything)} submissions in {target}")
        if args.out:  # a shard's folder exists even when none of the submissions fell in it
            Path(args.out).mkdir(parents=True, exist_ok=True)
        reports = grade_many(subs, jobs=args.jobs, limits=_limits(args), **common) if subs else []
        for r in reports:
            print(r.table(args.show_hidden), end="\n\n")
            if args.out:
                write_json_atomic(r.to_gradescope(args.show_hidden), Path(args.out) / f"{Path(r.submission).stem}.json")
        write_gradebook(reports, args.gradebook)
        print(f"gradebook: {args.gradebook} ({len(reports)} submissions)")
        return 0
    results_path = args.out or "results.json"
    try:
        report = grade_notebook(target, limits=_limits(args), results_path=results_path, **common)
    except GradingError as err:
        print(f"grader error: {err}", file=sys.stderr)
        return 2
    data = report.to_gradescope(args.show_hidden)
    write_json_atomic(data, results_path)  # last, by the parent: nothing the child wrote survives
    print(report.table(args.show_hidden))
    print(f"results: {results_path}")
    if args.min_score is not None and report.score < args.min_score:
        print(f"score {report.score:g} is below --min-score {args.min_score:g}", file=sys.stderr)
        return 1
    return 0


def cmd_gradebook(args) -> int:
    """Merge the results files of ``fmlab grade`` (one folder per shard, or any files) into one
    gradebook; list on stderr what is missing, failed or graded twice (exit status 1)."""
    from .grading import gradebook as gb

    try:
        rows, unreadable = gb.read_results(args.results)
        roster = gb.read_roster(args.roster) if args.roster else None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.expect and not Path(args.expect).is_dir():
        print(f"error: --expect {args.expect}: not a folder of submissions", file=sys.stderr)
        return 2
    if args.lab:
        rows = [r for r in rows if r.lab == args.lab]
    expected = ([s["submission"] for s in roster] if roster is not None else
                [p.name for p in gb.submissions_in(args.expect)] if args.expect else None)
    if not rows and not expected:
        print(f"error: no results of fmlab grade in {', '.join(args.results)}"
              + (f" for lab {args.lab}" if args.lab else ""), file=sys.stderr)
        return 2
    rows = gb.merge(rows, expected)
    labs = sorted({r.lab for r in rows if r.lab})
    if args.format != "fmlab":
        if roster is None:
            print(f"error: --format {args.format} needs --roster ROSTER.csv: a 'submission' column "
                  f"(each notebook's file name) and the students' name, email, sid (SIS User ID), "
                  f"id (Canvas's), sis login id, section, as {args.format} needs", file=sys.stderr)
            return 2
        if len(labs) > 1:
            print(f"error: these results hold several labs ({', '.join(labs)}); a {args.format} "
                  f"file holds one: add --lab LAB", file=sys.stderr)
            return 2
    assignment = args.assignment or (labs[0] if labs else "lab")
    lines, notes = gb.table(rows, args.format, roster, assignment)
    gb.write_csv(lines, args.out)
    for line in [f"not a results file: {u}" for u in unreadable] + [f"note: {n}" for n in notes]:
        print(line, file=sys.stderr)
    listing, counts = gb.summary(rows)
    print(listing, end="", file=sys.stderr)
    print(f"gradebook: {args.out} ({len(rows)} submissions: {counts})")
    trouble = unreadable or any(r.status in (gb.MISSING, gb.FAILED, gb.DUPLICATE) for r in rows)
    return 1 if trouble else 0


def cmd_assign(args) -> int:
    from .grading.assign import assign

    tests = args.tests
    if tests is None and not args.no_prove and (Path(args.labs) / "hidden").is_dir():
        tests = str(Path(args.labs) / "hidden")
    ok = assign(args.labs, args.out, prove=not args.no_prove, tests=tests)
    return 0 if ok else 1


def cmd_data(args) -> int:
    from .runtime import data_dir

    root = data_dir()
    print(f"data folder: {root}  (set FMLAB_DATA to change it)")
    entries = sorted(p for p in root.iterdir()) if root.exists() else []
    for p in entries:
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        print(f"  {p.name:<30} {size / 2**20:8.1f} MB")
    if not entries:
        print("  (empty: the quick profile uses the embedded MNIST subset, digits and shapes)")
    return 0


def cmd_bench(args) -> int:
    """Run ``benchmarks/bench_<name>.py`` of a checkout of the repository with the options given.

    The benchmarks time the book's notebooks and compare ``fit`` with a hand-written loop, so
    they need the repository (book/, labs/, benchmarks/), which a pip-installed fmlab lacks.
    """
    import importlib.util

    here = Path(__file__).resolve().parents[1]  # the checkout, for an editable install
    folders = [f for f in (Path.cwd() / "benchmarks", here / "benchmarks") if f.is_dir()]
    if not folders:
        print("error: fmlab bench runs the scripts in benchmarks/ of a checkout of the repository; "
              "run it from there (git clone, then pip install -e .)", file=sys.stderr)
        return 2
    scripts = {p.stem.removeprefix("bench_"): p for p in sorted(folders[0].glob("bench_*.py"))}
    if args.name not in scripts:
        print(f"error: unknown benchmark {args.name!r}; choose one of: {', '.join(scripts)}",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{args.name}", scripts[args.name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args.options)


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark of benchmarks/ and update benchmarks/RESULTS.md",
                       description="Run benchmarks/bench_NAME.py (from a checkout of the repository); "
                       "options after NAME go to the script, e.g. fmlab bench train --repeats 3.")
    b.add_argument("name", nargs="?", default="train", help="the benchmark (default: train)")
    b.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark script")
    b.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmlab", description="Foundation Models Lab: course tools")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade a submitted lab notebook (or a folder of them)")
    g.add_argument("submission", help="a .ipynb file, or a folder of them for a gradebook")
    g.add_argument("--tests", help="folder of hidden tests (<lab>.py files defining HIDDEN)")
    g.add_argument("--out", help="results.json path (a folder for a folder of submissions)")
    g.add_argument("--lab", help="lab id, when the notebook's metadata lacks it")
    g.add_argument("--checks", help="public checks file (default: the lab's, shipped with fmlab)")
    g.add_argument("--questions", help="grade only these questions, e.g. q1,q2")
    g.add_argument("--min-score", type=float, help="exit with status 1 below this score")
    g.add_argument("--timeout", type=float,
                   help="CPU seconds per case and per cell (default: each question's own); the "
                        "wall-clock ceiling is 5 times that")
    g.add_argument("--total-timeout", type=float, default=900.0,
                   help="wall-clock seconds for the whole submission")
    g.add_argument("--memory-mb", type=int, default=4096, help="memory limit of the student's code")
    g.add_argument("--threads", type=int, default=1, help="torch threads of the student's code")
    g.add_argument("--jobs", type=int, default=1,
                   help="submissions graded at once (folder mode; at most one per core)")
    g.add_argument("--gradebook", default="gradebook.csv", help="CSV gradebook (folder mode)")
    g.add_argument("--shard", type=_shard, metavar="K/N",
                   help="grade only shard K of N of the folder (K = 1..N), as N machines do; "
                        "fmlab gradebook merges their results")
    g.add_argument("--show-hidden", action="store_true", help="show hidden tests' messages too")
    g.set_defaults(func=cmd_grade)

    m = sub.add_parser("gradebook", help="merge the results of fmlab grade (e.g. of N shards) "
                       "into one gradebook", description="Read the results files of fmlab grade "
                       "(folders are searched with their subfolders) and write one CSV: a row per "
                       "submission, a column per question, the total and a status. Exit status 1 "
                       "when a submission is missing, failed or was graded twice (listed on stderr).")
    m.add_argument("results", nargs="+", help="folders (or files) of results, e.g. one per shard")
    m.add_argument("--out", default="gradebook.csv", help="the CSV to write (default: gradebook.csv)")
    who = m.add_mutually_exclusive_group()
    who.add_argument("--roster", help="CSV of the students: a 'submission' column (notebook file "
                     "name) and name, email, sid, id, sis login id, section as the format needs")
    who.add_argument("--expect", metavar="FOLDER", help="the folder of submissions that was graded: "
                     "its notebooks without results are listed as missing")
    m.add_argument("--format", choices=("fmlab", "canvas", "gradescope"), default="fmlab",
                   help="fmlab (default), canvas (gradebook import) or gradescope (scores upload)")
    m.add_argument("--lab", help="only the results of this lab")
    m.add_argument("--assignment", help="the assignment column's header in a Canvas file (default: "
                   "the lab id; an exported column's 'Name (id)' updates that assignment)")
    m.set_defaults(func=cmd_gradebook)

    a = sub.add_parser("assign", help="write student versions of the master labs and prove them")
    a.add_argument("labs", help="folder of master lab notebooks (labs/)")
    a.add_argument("--out", required=True, help="folder for the student notebooks")
    a.add_argument("--tests", help="hidden tests for the proof (default: LABS/hidden)")
    a.add_argument("--no-prove", action="store_true", help="only write the student versions")
    a.set_defaults(func=cmd_assign)

    d = sub.add_parser("data", help="show the data folder and what is cached there")
    d.set_defaults(func=cmd_data)
    _add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("grade", "assign"):
        # Grading is defined in the quick profile (the embedded data), whatever the machine.
        os.environ["FMLAB_PROFILE"] = "quick"
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
