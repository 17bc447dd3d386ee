"""Measure fmlab.fit against a hand-written loop, and each notebook's run time.

    python benchmarks/bench_train.py              # fit vs hand-written loop
    python benchmarks/bench_train.py --notebooks  # also execute every notebook (quick profile)

Both loops train the same model from the same initial weights on the same batches (same seed)
with the same optimizer; they are interleaved over several repeats, and the ratio of their
median times is reported, so machine noise hits both alike. Results go to stdout and to
benchmarks/RESULTS.md.
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
    return {"device": str(dev), "median_s": med, "ratio": med["fmlab.fit"] / med["hand-written loop"],
            "same_weights": same, "repeats": repeats, "epochs": epochs, "n": n, "batch_size": batch_size}


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--notebooks", action="store_true", help="also time every notebook")
    args = ap.parse_args(argv)
    os.environ.setdefault("FMLAB_PROFILE", "quick")

    conditions = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"profile {fmlab.profile().name}, {time.strftime('%Y-%m-%d')}")
    print(f"conditions: {conditions}")
    r = bench_fit(args.repeats, args.epochs, args.n, args.batch_size)
    lines = ["# Benchmark results", "", f"Conditions: {conditions}.", "",
             f"## fmlab.fit vs a hand-written loop ({r['device']})", "",
             f"SeedCNN on {r['n']} MNIST images, {r['epochs']} epochs, batch {r['batch_size']}, "
             f"Adam; median of {r['repeats']} interleaved repeats after one warm-up round.", "",
             "| loop | median time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["median_s"].items()]
    lines += ["", f"Ratio fit / hand-written: **{r['ratio']:.3f}** (goal ≤ 1.03). "
              f"Identical final weights: {r['same_weights']}."]
    print("\n".join(lines[4:]))
    if args.notebooks:
        nbs = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "labs").glob("*.ipynb"))
        print("notebook run times (quick profile):")
        times = bench_notebooks(nbs)
        lines += ["", "## Notebook run times (quick profile)", "", "| notebook | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in times.items()]
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
