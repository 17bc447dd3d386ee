"""Size and CPU latency of compressed variants of the compression chapter's models, as ratios
against the dense float32 model measured in the same run.

    python benchmarks/bench_compress.py                      # 1 thread, batches 1 and 256
    python benchmarks/bench_compress.py --threads 1 2 --repeats 21

Size is the byte count of ``torch.save`` (of the state dict, or of the packed format that
stores a pruned zero as one bit). Latency is the median over interleaved repeats of one
forward pass (``fmlab.compress.median_latency``), reported as a ratio to the dense model of the
same call. Neither depends on what the weights learned, so the models here are not trained:
masks and kept filters come from the magnitudes of seeded initial weights. Accuracy is
measured in book/05_compression.ipynb, which reports the same ratios for trained models.
Results go to stdout and to benchmarks/RESULTS_compress.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

from fmlab import compress as C
from fmlab import models

ROOT = Path(__file__).resolve().parents[1]


class CSRLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR form and multiplied by a sparse kernel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = linear.bias.detach()

    def forward(self, x):
        return (self.weight @ x.T).T + self.bias


def pruned(model: nn.Module, sparsity: float) -> nn.Module:
    model = copy.deepcopy(model)
    C.magnitude_prune(model, sparsity)
    return C.make_permanent(model).eval()


def cnn_variants() -> dict[str, tuple[nn.Module, object, str]]:
    """name: (model that runs, what is saved, how it is stored)."""
    torch.manual_seed(0)
    dense = models.TwoConvNet().eval()
    unstructured = pruned(dense, 0.9)
    slim = C.prune_filters(dense, 0.5, torch.rand(1, 1, 28, 28))
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.ReLU(), nn.Linear(40, 10)).eval()
    wo, dyn = C.torchao_int8(dense, "weight_only"), C.torchao_int8(dense, "dynamic")
    return {
        "dense float32 (TwoConvNet)": (dense, dense, "float32 state dict"),
        # a second copy, timed like a variant: its distance from 1 is this run's noise
        "dense float32, a second copy": (copy.deepcopy(dense), dense, "float32 state dict"),
        "pruned 90%, unstructured": (unstructured, unstructured, "float32, zeros included"),
        "pruned 90%, packed": (unstructured, C.packed_state(unstructured),
                               "bit mask + float32 nonzeros"),
        "int8 codes, all layers (packed)": (dense, C.packed_state(dense, sparse=False, bits=8),
                                            "int8 + per-channel scales (runs as float32)"),
        "filters pruned 50%": (slim, slim, "float32 state dict"),
        "int8 weight-only (torchao)": (wo, wo, "int8 Linear weights, float32 convs"),
        "int8 dynamic (torchao)": (dyn, dyn, "int8 Linear weights, float32 convs"),
        "student MLP 784-40-10": (student, student, "float32 state dict"),
    }


def bench_cnn(threads: int, batches: list[int], repeats: int) -> list[str]:
    variants = cnn_variants()
    running: dict[str, nn.Module] = {}
    for name, (model, _, _) in variants.items():
        if all(model is not m for m in running.values()):
            running[name] = model
    base = next(iter(variants))
    base_bytes = C.saved_bytes(variants[base][1])
    ratios, base_ms = {}, {}
    for b in batches:
        t = C.median_latency(running, torch.rand(b, 1, 28, 28), repeats, threads=threads)
        base_ms[b] = 1000 * t[base]
        for name, (model, _, _) in variants.items():
            runner = next(k for k, m in running.items() if m is model)
            ratios[name, b] = t[runner] / t[base]
    lines = [f"### TwoConvNet and its variants, {threads} thread(s)", "",
             "| variant | stored as | bytes | smaller | " +
             " | ".join(f"latency ratio, batch {b}" for b in batches) + " |",
             "|---|---|---|---|" + "---|" * len(batches)]
    for name, (_, saved, stored) in variants.items():
        size = C.saved_bytes(saved)
        lines.append(f"| {name} | {stored} | {size:,} | {base_bytes / size:.1f}x | " +
                     " | ".join(f"{ratios[name, b]:.3g}" for b in batches) + " |")
    lines += ["", "The second copy of the dense model would have a ratio of exactly 1 on a quiet "
              "machine; its distance from 1 is the noise of this run. Dense model's median latency: " +
              ", ".join(f"{base_ms[b]:.3g} ms at batch {b}" for b in batches) + ". "
              "The packed int8 row stores int8 codes but runs the float32 model it decodes to.", ""]
    return lines


def bench_csr(threads: int, batches: list[int], repeats: int) -> list[str]:
    torch.manual_seed(0)
    dense = models.LeNet300100().eval()
    lines = [f"### LeNet-300-100: dense kernels against a sparse (CSR) kernel, {threads} thread(s)",
             "", "| sparsity | batch | pruned, dense kernel | pruned, CSR kernel |",
             "|---|---|---|---|"]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for s in (0.5, 0.9, 0.98):
            sparse = pruned(dense, s)
            csr = copy.deepcopy(sparse)
            for i, layer in enumerate(csr.net):
                if isinstance(layer, nn.Linear):
                    csr.net[i] = CSRLinear(layer)
            for b in batches:
                t = C.median_latency({"dense": dense, "pruned": sparse, "csr": csr},
                                     torch.rand(b, 1, 28, 28), repeats, threads=threads)
                lines.append(f"| {s:.0%} | {b} | {t['pruned'] / t['dense']:.3g} | "
                             f"{t['csr'] / t['dense']:.3g} |")
    return lines + ["", "Latency as a ratio to the dense LeNet-300-100 of the same call.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS_compress.md")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = ["# Compression benchmark: bytes and CPU latency", "",
             f"Conditions: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{datetime.date.today().isoformat()}, load average {load:.1f} at the start; "
             f"median of {args.repeats} interleaved repeats per model, each repeat at least "
             "50 ms of calls; untrained, seeded weights (size and latency do not depend on "
             "training). Written by `python benchmarks/bench_compress.py "
             f"--threads {' '.join(map(str, args.threads))} --repeats {args.repeats}`.", ""]
    for threads in args.threads:
        lines += bench_cnn(threads, args.batches, args.repeats)
        lines += bench_csr(threads, args.batches, args.repeats)
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
