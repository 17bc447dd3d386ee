"""The ``fmlab`` command: ``fmlab grade``, ``fmlab assign``, ``fmlab data``, ``fmlab bench``.

``grade`` and ``assign`` are explained in book/instructors.md; ``bench`` runs a benchmark of
benchmarks/ from a checkout. Exit status: 0 when the command did its job (for ``grade``:
whatever the score, unless ``--min-score`` is given and not reached, then 1); 2 when the grader
itself could not run (a broken checks file, a missing hidden-tests file, bad arguments).
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


def cmd_grade(args) -> int:
    from .grading.grader import grade_many, grade_notebook
    from .grading.report import write_gradebook, write_json_atomic
    from .grading.runner import GradingError

    target = Path(args.submission)
    only = args.questions.split(",") if args.questions else None
    common = dict(tests=args.tests, lab=args.lab, checks=args.checks, only=only)
    if args.tests is None:
        print("note: no --tests folder given; grading with the public tests only", file=sys.stderr)
    if target.is_dir():
        subs = sorted(p for p in target.glob("*.ipynb") if not p.name.startswith("."))
        if not subs:
            print(f"error: no .ipynb files in {target}", file=sys.stderr)
            return 2
        reports = grade_many(subs, jobs=args.jobs, limits=_limits(args), **common)
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
    g.add_argument("--show-hidden", action="store_true", help="show hidden tests' messages too")
    g.set_defaults(func=cmd_grade)

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
