"""Measure fmlab.fit against a hand-written loop, and each notebook's run time.

    fmlab bench train               # fit vs hand-written loop (= python benchmarks/bench_train.py)
    fmlab bench train --notebooks   # also execute every notebook (quick profile)

Both loops train the same model from the same initial weights on the same batches (same seed)
with the same optimizer; they are interleaved over several repeats, and the ratio of their
median times is reported, so machine noise hits both alike; the spread of the per-repeat
ratios shows how much noise there was. Results go to stdout and to benchmarks/RESULTS.md,
where each benchmark replaces only its own section. On a shared machine, run with
OMP_NUM_THREADS=1: the conditions line records the threads and the load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fmlab
from fmlab import data, models, train

ROOT = Path(__file__).resolve().parents[1]


def hand_loop(model, tr, epochs, batch_size, seed, dev):
    """The loop of book/01_training_cnn.ipynb, written out, with no bookkeeping."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for xb, yb in data.batches(tr.x, tr.y, batch_size, generator=gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def bench_fit(repeats: int, epochs: int, n: int, batch_size: int) -> dict:
    dev = fmlab.device()
    tr = data.load("mnist", "train", n=n).to(dev)
    fmlab.seed_everything(0)
    init = models.SeedCNN().state_dict()
    times = {"hand-written loop": [], "fmlab.fit": []}
    finals = {}
    for r in range(repeats + 1):  # the first round warms up and is not counted
        for name in times:
            model = models.SeedCNN().to(dev)
            model.load_state_dict(init)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if name == "fmlab.fit":
                train.fit(model, tr, epochs=epochs, batch_size=batch_size, seed=r, progress=False,
                          device=dev, amp=False)
            else:
                hand_loop(model, tr, epochs, batch_size, r, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append(time.perf_counter() - t0)
            finals[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    same = torch.equal(finals["fmlab.fit"], finals["hand-written loop"])
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = [f / h for f, h in zip(times["fmlab.fit"], times["hand-written loop"])]
    return {"device": str(dev), "median_s": med, "ratio": med["fmlab.fit"] / med["hand-written loop"],
            "pair_ratios": pairs, "same_weights": same, "repeats": repeats, "epochs": epochs,
            "n": n, "batch_size": batch_size}


def bench_notebooks(paths: list[Path]) -> dict[str, float]:
    import nbformat
    from nbclient import NotebookClient

    out = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        out[str(path.relative_to(ROOT))] = time.perf_counter() - t0
        print(f"  {path.relative_to(ROOT)}: {out[str(path.relative_to(ROOT))]:.1f} s", flush=True)
    return out


def conditions() -> str:
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{load}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"profile {fmlab.profile().name}, {time.strftime('%Y-%m-%d')}")


def write_section(title: str, lines: list[str], path: Path) -> None:
    """Replace the ``## title`` section of RESULTS.md in place (or append it), keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    head, *sections = [part.rstrip("\n") + "\n" for part in text.split("\n## ")]
    section = "\n".join([title, ""] + lines) + "\n"
    found = [i for i, sec in enumerate(sections) if sec.startswith(title + "\n")]
    if found:
        sections[found[0]] = section
    else:
        sections.append(section)
    path.write_text("\n## ".join([head] + sections))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fmlab bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--notebooks", action="store_true", help="also time every notebook")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                    help="the results file whose sections are updated")
    args = ap.parse_args(argv)
    os.environ.setdefault("FMLAB_PROFILE", "quick")

    cond = conditions()
    print(f"conditions: {cond}")
    r = bench_fit(args.repeats, args.epochs, args.n, args.batch_size)
    pairs = r["pair_ratios"]
    lines = [f"Conditions: {cond}.", "",
             f"SeedCNN on {r['n']} MNIST images ({r['device']}), {r['epochs']} epochs, batch "
             f"{r['batch_size']}, Adam; median of {r['repeats']} interleaved repeats after one "
             "warm-up round.", "", "| loop | median time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["median_s"].items()]
    lines += ["", f"Ratio fit / hand-written: **{r['ratio']:.3f}** (goal ≤ 1.03); per-repeat ratios "
              f"{min(pairs):.3f}–{max(pairs):.3f} (median {statistics.median(pairs):.3f}). "
              f"Identical final weights: {r['same_weights']}."]
    print("\n".join(lines[2:]))
    write_section("fmlab.fit vs a hand-written loop", lines, args.results)
    if args.notebooks:
        nbs = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "labs").glob("*.ipynb"))
        print("notebook run times (quick profile):")
        times = bench_notebooks(nbs)
        write_section("Notebook run times (quick profile)",
                      [f"Conditions: {cond}.", "", "| notebook | seconds |", "|---|---|"]
                      + [f"| {k} | {v:.1f} |" for k, v in times.items()], args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
