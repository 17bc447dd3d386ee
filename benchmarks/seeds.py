"""Run a chapter under several seeds and report how much its headline numbers vary.

    python benchmarks/seeds.py book/04_adversarial.ipynb --seeds 0 1 2

Each run executes the whole notebook (quick profile unless FMLAB_PROFILE says otherwise, one
thread, on the CPU) with ``FMLAB_SEED`` set; a chapter that reads it derives every seed it
uses from it (initial weights, batch order, attack noise), while the data stay the same. The
numbers the chapter records with ``fmlab.results.record`` are collected from the executed
notebook, and the runs continue past errors so that a failing assertion is reported, not
fatal. The script prints, per number, the value of each seed and their mean and standard
deviation, and which seeds failed which assertion; it writes the same to
``benchmarks/seeds_<chapter>.md``. The chapters' assertion margins come from these tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
GLUE = "application/papermill.record/"


def run(path: Path, seed: int, timeout: int) -> tuple[dict, list[str], float]:
    """Execute the notebook with FMLAB_SEED=seed: (recorded numbers, errors, CPU seconds)."""
    env = {"FMLAB_SEED": str(seed), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FMLAB_DEVICE": "cpu", "MPLBACKEND": "Agg"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    before = os.times()
    try:
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system
                                                          - before.children_system)
    values, errors = {}, []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                text = out["data"].get(GLUE + "text/plain")
                try:
                    values[name] = float(text)
                except (TypeError, ValueError):
                    pass
            if out.get("output_type") == "error":
                errors.append(f"cell {i}: {out['ename']}: {out['evalue'][:200]}")
    return values, errors, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    path = args.notebook.resolve()
    profile = os.environ.get("FMLAB_PROFILE", "quick")
    os.environ["FMLAB_PROFILE"] = profile
    results = {}
    for seed in args.seeds:
        values, errors, cpu = run(path, seed, args.timeout)
        results[seed] = (values, errors, cpu)
        print(f"seed {seed}: {len(values)} numbers, {len(errors)} errors, "
              f"{cpu:.0f} s of kernel CPU time", flush=True)
        for e in errors:
            print("   ", e, flush=True)

    keys = sorted({k for values, _, _ in results.values() for k in values})
    lines = [
        f"# {path.stem}: the recorded numbers over seeds {args.seeds}",
        "",
        f"Conditions: {platform.machine()}, torch {torch.__version__}, 1 thread, CPU, "
        f"profile {profile}, {time.strftime('%Y-%m-%d')}; command: "
        f"`python benchmarks/seeds.py {path.relative_to(ROOT)} --seeds "
        f"{' '.join(map(str, args.seeds))}`.",
        "",
        "| number | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |",
        "|---|" + "---|" * len(args.seeds) + "---|",
    ]
    summary = {}
    for key in keys:
        vals = [results[s][0].get(key) for s in args.seeds]
        present = [v for v in vals if v is not None and v == v]
        mean = statistics.mean(present) if present else float("nan")
        std = statistics.stdev(present) if len(present) > 1 else float("nan")
        summary[key] = {"values": vals, "mean": mean, "std": std}
        cells = " | ".join("—" if v is None else f"{v:.4g}" for v in vals)
        lines.append(f"| `{key}` | {cells} | {mean:.4g} ± {std:.2g} |")
        print(f"{key:32s} {cells:>40s}   {mean:.4g} ± {std:.2g}")
    lines += ["", "Failed assertions and other errors:", ""]
    for seed in args.seeds:
        errors = results[seed][1]
        lines.append(f"- seed {seed}: " + ("none" if not errors else "; ".join(errors)))
    lines += ["", "Kernel CPU time per run: "
              + ", ".join(f"seed {s} {results[s][2]:.0f} s" for s in args.seeds) + ".", ""]
    out = ROOT / "benchmarks" / f"seeds_{path.stem}.md"
    out.write_text("\n".join(lines))
    (out.with_suffix(".json")).write_text(json.dumps(summary, indent=1))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
