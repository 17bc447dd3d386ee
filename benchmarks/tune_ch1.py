"""Choose the learning rate and the number of epochs of chapter 1's better model on validation
data, over several seeds.

    python benchmarks/tune_ch1.py                  # quick profile, 3 seeds (about 7 CPU-minutes)
    python benchmarks/tune_ch1.py --seeds 0 1 2 3  # more seeds

The model is book/01_training_cnn.ipynb's "better model": `TwoConvNet`, random shifts of up to
two pixels, Adam under a one-cycle schedule whose peak is the learning rate. It trains on the
chapter's fitting split (the training images minus the validation images, the same split the
chapter uses for early stopping) and is scored on the validation images; the test images are
never loaded. For every (learning rate, epochs) pair of the grid the script reports the mean
and standard deviation of the validation accuracy over the seeds, and picks the pair with the
highest mean (of equal means, the first in the grid: the smaller learning rate, then fewer
epochs). The result goes to stdout and to benchmarks/tune_ch1.md; the chapter's size table
(`fmlab.train.SIZES`, keys `best_lr` and `best_epochs`) holds the chosen values.
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import fmlab
from fmlab import data, models, train

ROOT = Path(__file__).resolve().parents[1]
LRS = (1e-3, 3e-3, 1e-2)
EPOCHS = (5, 10, 15)


def validation_split(train_set: data.Dataset, fraction: float):
    """The chapter's split: the last `fraction` of the training images validate."""
    n_val = round(len(train_set) * fraction)
    fit_set = train_set.subset(len(train_set) - n_val)
    val_set = data.Dataset(train_set.x[-n_val:], train_set.y[-n_val:], train_set.classes,
                           "mnist-val")
    return fit_set, val_set


def run(fit_set, val_set, lr: float, epochs: int, batch_size: int, seed: int) -> float:
    """Validation accuracy of one run of the chapter's recipe."""
    fmlab.seed_everything(seed)
    model = models.TwoConvNet(1, 10, 28)
    steps = epochs * -(-len(fit_set) // batch_size)
    train.fit(model, fit_set, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
              batch_transform=data.shift_augmentation(max_shift=2, seed=seed),
              scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
                  opt, lr, total_steps=steps),
              progress=False, device="cpu", amp=False)
    return train.evaluate(model, val_set).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prof = fmlab.profile()
    sizes = prof.pick(train.SIZES)
    train_set = data.load("mnist", "train", n=prof.n_train)
    fit_set, val_set = validation_split(train_set, sizes["val_fraction"])
    batch_size = sizes["best_batch_size"]
    print(f"profile {prof.name}: {len(fit_set)} images to fit, {len(val_set)} to validate, "
          f"batch {batch_size}, seeds {args.seeds}")
    rows, cpu0 = [], time.process_time()
    for lr, epochs in itertools.product(LRS, EPOCHS):
        accs = [run(fit_set, val_set, lr, epochs, batch_size, s) for s in args.seeds]
        rows.append((lr, epochs, statistics.mean(accs), statistics.stdev(accs), accs))
        print(f"lr {lr:g}, {epochs:2d} epochs: validation accuracy "
              f"{rows[-1][2]:.4f} ± {rows[-1][3]:.4f}  {[round(a, 4) for a in accs]}",
              flush=True)
    best = max(rows, key=lambda r: r[2])
    cpu = time.process_time() - cpu0
    print(f"chosen: lr {best[0]:g}, {best[1]} epochs ({best[2]:.4f} ± {best[3]:.4f}); "
          f"{cpu:.0f} s of CPU time")

    lines = [
        "# Chapter 1: learning rate and epochs of the better model, chosen on validation data",
        "",
        f"Conditions: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"profile {prof.name}, {time.strftime('%Y-%m-%d')}; "
        f"command: `python benchmarks/tune_ch1.py --seeds {' '.join(map(str, args.seeds))}`.",
        "",
        f"TwoConvNet, shifts of up to 2 pixels, Adam with a one-cycle schedule peaking at the "
        f"learning rate, batch {batch_size}; trained on {len(fit_set)} images, scored on the "
        f"{len(val_set)} validation images (the test images are not loaded). Mean ± standard "
        f"deviation over seeds {args.seeds}.",
        "",
        "| learning rate | epochs | validation accuracy | per seed |",
        "|---|---|---|---|",
    ]
    for lr, epochs, mean, std, accs in rows:
        mark = " **(chosen)**" if (lr, epochs) == best[:2] else ""
        lines.append(f"| {lr:g} | {epochs} | {mean:.4f} ± {std:.4f}{mark} | "
                     f"{', '.join(f'{a:.4f}' for a in accs)} |")
    lines += ["", f"Chosen: learning rate {best[0]:g}, {best[1]} epochs (the highest mean; of "
              "equal means, the first in the grid). Differences smaller than the standard "
              "deviations are not meaningful. "
              f"CPU time of the whole grid: {cpu:.0f} s.", ""]
    (ROOT / "benchmarks" / "tune_ch1.md").write_text("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("FMLAB_PROFILE", "quick")
    main()
