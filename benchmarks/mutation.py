"""Mutation testing of fmlab's core modules: how many small code changes do the unit tests catch?

mutmut (3.8) copies the package to ``mutants/``, makes every small change it knows inside each
function (an operator, a constant, a comparison, an argument dropped, ...) and runs, for each
mutant, the fast unit tests that call the mutated function. A mutant is *killed* when a test
fails, *survives* when all pass, has *no tests* when no unit test calls its function, and
*times out* when the tests run far longer than on the original code (counted as caught).

    make mutation                                # every core module, one worker
    .venv/bin/python benchmarks/mutation.py train data
    .venv/bin/python benchmarks/mutation.py --survivors   # re-check the last survivors and timeouts
    .venv/bin/python benchmarks/mutation.py --report      # the last results, without running

Which files may be mutated and which tests run is set in pyproject.toml, ``[tool.mutmut]``: the
fast unit tests only, never the notebooks, labs or grading. Not part of CI: a full run takes
about an hour of CPU time. Results accumulate in ``mutants/`` (git-ignored); ``--fresh``
deletes it first. Survivors are listed, with their diffs, in
``benchmarks/results/mutation_survivors.txt``; benchmarks/MUTATION.md explains each one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ("runtime", "data", "models", "train", "losses", "optim", "adversarial")
# mutmut's exit codes (mutmut/stats.py): what each run of a mutant's tests ended with
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", None: "not checked"}


def mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        sys.exit("mutmut is not installed in this environment: pip install mutmut==3.8.1")
    return str(exe)


def results(module: str) -> dict[str, str]:
    """mutant name -> status, from mutmut's record of ``fmlab/<module>.py``."""
    meta = ROOT / "mutants" / "fmlab" / f"{module}.py.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: STATUS.get(code, "suspicious") for name, code in codes.items()}


def summary(module: str) -> dict:
    status = results(module)
    counts = Counter(status.values())
    caught = counts["killed"] + counts["timeout"]
    tested = len(status) - counts["skipped"] - counts["not checked"]
    return {"module": module, "mutants": len(status), "killed": counts["killed"],
            "timeout": counts["timeout"], "survived": counts["survived"],
            "no_tests": counts["no tests"], "not_checked": counts["not checked"],
            "other": tested - caught - counts["survived"] - counts["no tests"],
            "score": caught / tested if tested else float("nan"),
            "survivors": sorted(n for n, s in status.items() if s in ("survived", "no tests")),
            "timeouts": sorted(n for n, s in status.items() if s == "timeout")}


def run(names: list[str], max_children: int) -> tuple[float, float]:
    """Run mutmut on the mutants matching ``names``; return (wall, CPU) seconds it took."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FMLAB_THREADS="1",
               FMLAB_PROFILE="quick")
    subprocess.run([mutmut(), "run", "--max-children", str(max_children), *names], cwd=ROOT,
                   env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - t0, cpu


def write_survivors(modules: list[str]) -> Path:
    out = ROOT / "benchmarks" / "results" / "mutation_survivors.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # mutmut reads its configuration and mutants/ from the working directory
    from mutmut.__main__ import find_mutant, get_diff_for_mutant

    parts = []
    for m in modules:
        for name in summary(m)["survivors"]:
            status = results(m)[name]
            diff = get_diff_for_mutant(name, path=find_mutant(name).path)
            parts.append(f"# {name}: {status}\n{diff.rstrip()}\n")
    out.write_text("\n".join(parts))
    return out


def table(rows: list[dict], times: dict[str, tuple[float, float]]) -> str:
    lines = ["| module | mutants | killed | timeout | survived | no tests | score | wall s | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        wall, cpu = times.get(r["module"], (float("nan"), float("nan")))
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | "
                     f"{r['survived']} | {r['no_tests']} | {r['score']:.1%} | {wall:.0f} | {cpu:.0f} |")
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "timeout", "survived",
                                                   "no_tests", "not_checked")}
    tested = total["mutants"] - total["not_checked"]
    score = (total["killed"] + total["timeout"]) / tested if tested else float("nan")
    lines.append(f"| **all** | {total['mutants']} | {total['killed']} | {total['timeout']} | "
                 f"{total['survived']} | {total['no_tests']} | {score:.1%} | "
                 f"{sum(w for w, _ in times.values()):.0f} | {sum(c for _, c in times.values()):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", default=list(CORE), help=f"of {', '.join(CORE)}")
    ap.add_argument("--max-children", type=int, default=1, help="parallel workers (default 1)")
    ap.add_argument("--fresh", action="store_true", help="delete mutants/ first")
    ap.add_argument("--survivors", action="store_true",
                    help="re-run only the mutants that survived, had no tests or timed out last time")
    ap.add_argument("--report", action="store_true", help="print the last results; run nothing")
    ap.add_argument("--json", type=Path, help="also write the summary to this file")
    args = ap.parse_args(argv)
    unknown = set(args.modules) - set(CORE)
    if unknown:
        ap.error(f"unknown module(s) {sorted(unknown)}; choose from {', '.join(CORE)}")
    if args.fresh and (ROOT / "mutants").exists():
        shutil.rmtree(ROOT / "mutants")
    times: dict[str, tuple[float, float]] = {}
    if not args.report:
        for m in args.modules:
            last = summary(m)
            names = last["survivors"] + last["timeouts"] if args.survivors else [f"fmlab.{m}.*"]
            if not names:
                print(f"fmlab.{m}: no survivors to re-check")
                continue
            print(f"=== fmlab.{m}: {len(names) if args.survivors else 'all'} mutants", flush=True)
            times[m] = run(names, args.max_children)
    rows = [summary(m) for m in args.modules]
    print()
    print(f"mutmut, {args.max_children} worker(s), OMP_NUM_THREADS=1, on {os.cpu_count()} cores")
    print(table(rows, times))
    for r in rows:
        if r["survivors"]:
            print(f"\nfmlab.{r['module']}: {len(r['survivors'])} survivors")
            for name in r["survivors"]:
                print("   ", name)
    print(f"\ndiffs: {write_survivors(args.modules).relative_to(ROOT)}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "times": times}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
