"""Pre-training the source model once, and caching it with a checksum.

Explained in book/07_finetuning.ipynb. The source task is the handwritten digits 0–4 of MNIST
(the embedded 5,000 images in the quick profile). Two ways to pre-train a
:class:`fmlab.models.ViT` on them:

* ``"supervised"``: cross-entropy on the source labels;
* ``"mae"``: self-supervised, as a masked autoencoder (He et al. 2022): hide most patches,
  encode the visible ones, and have a small decoder predict the pixels of the hidden ones.
  No label is used.

:func:`pretrained` returns the weights from the cache under ``FMLAB_DATA``
(:func:`fmlab.runtime.cache_dir`), after checking their SHA-256 checksum; a missing or corrupt
file is rebuilt with a one-line notice. The file name carries a hash of the settings, so the
quick, full and smoke profiles never read one another's weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
import time
from pathlib import Path

import torch

from . import data as fdata
from .models import MaskedAutoencoder, ViT
from .monitor import LossWindow
from .runtime import atomic_write, cache_dir, device, profile, seed_everything

SOURCE_CLASSES = (0, 1, 2, 3, 4)

# Pre-training sizes per profile. The ViT's shape lives here too: the lab and the chapter
# must build the same architecture as the cached weights.
SIZES = {
    "quick": {"vit": {"dim": 48, "depth": 3, "heads": 4, "mlp_ratio": 2.0},
              "epochs": 40, "lr": 3e-3, "batch_size": 64, "max_shift": 2,
              "mae_epochs": 20, "mae_lr": 3e-3, "mask_ratio": 0.75, "decoder_dim": 32},
    "full": {"vit": {"dim": 128, "depth": 6, "heads": 4, "mlp_ratio": 2.0},
             "epochs": 20, "lr": 1e-3, "batch_size": 256, "max_shift": 2,
             "mae_epochs": 60, "mae_lr": 1.5e-3, "mask_ratio": 0.75, "decoder_dim": 64},
    # the quick profile's ViT: the smoke run tests the full profile's code paths, not its model
    "smoke": {"vit": {"dim": 48, "depth": 3, "heads": 4, "mlp_ratio": 2.0}, "decoder_dim": 32,
              "epochs": 1, "mae_epochs": 1},
}


def split_classes(data: fdata.Dataset, classes) -> fdata.Dataset:
    """The examples of ``classes`` only, relabelled 0, 1, ... in the order given."""
    classes = list(classes)
    keep = torch.isin(data.y, torch.tensor(classes))
    relabel = torch.full((int(data.y.max()) + 1,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return fdata.Dataset(data.x[keep], relabel[data.y[keep]],
                         [data.classes[c] for c in classes],
                         f"{data.name}[{classes[0]}-{classes[-1]}]")


def source_task(split: str, mnist: str = "auto") -> fdata.Dataset:
    """MNIST digits 0–4 (``split`` = "train" or "test"), labels 0–4. ``mnist`` is the
    ``source`` of :func:`fmlab.data.load` ("embedded" pins the 5,000 bundled images)."""
    return split_classes(fdata.load("mnist", split, source=mnist), SOURCE_CLASSES)


def train_supervised(model: ViT, train: fdata.Dataset, sizes: dict, seed: int = 0):
    """Cross-entropy on the source labels with Adam, a cosine learning-rate decay, and random
    shifts of up to ``max_shift`` pixels (a ViT has no built-in tolerance to translation)."""
    from .train import fit

    steps = sizes["epochs"] * math.ceil(len(train) / sizes["batch_size"])
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    return fit(model, train, epochs=sizes["epochs"], lr=sizes["lr"], batch_size=sizes["batch_size"],
               scheduler=cosine, seed=seed, progress=False, device=device(),
               batch_transform=fdata.shift_augmentation(sizes["max_shift"], seed))


def train_mae(model: ViT, train: fdata.Dataset, sizes: dict, seed: int = 0) -> list[float]:
    """Pre-train ``model`` as the encoder of a :class:`MaskedAutoencoder`; the mean loss per
    epoch comes back. AdamW with weight decay 0.05 and a cosine decay, as He et al. (2022). A
    nan or inf loss raises :class:`~fmlab.monitor.NonFiniteLossError`, naming epoch and step."""
    mae = MaskedAutoencoder(model, sizes["decoder_dim"], sizes["mask_ratio"]).to(device())
    opt = torch.optim.AdamW(mae.parameters(), lr=sizes["mae_lr"], weight_decay=0.05)
    steps = sizes["mae_epochs"] * math.ceil(len(train) / sizes["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    x_all = train.x.to(device())
    losses = []
    for epoch in range(1, sizes["mae_epochs"] + 1):
        window = LossWindow(epoch)
        for xb, _ in fdata.batches(x_all, train.y.to(device()), sizes["batch_size"], generator=gen):
            loss = mae(fdata.random_shift(xb, sizes["max_shift"], gen), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window.add(loss, len(xb))
        losses.append(window.mean())
    return losses


# --- the cache ------------------------------------------------------------------------------

KINDS = ("supervised", "mae")
_BUILDING = threading.Lock()  # two threads that both miss the cache train it once, not twice


def _settings(kind: str, sizes: dict, train: fdata.Dataset, seed: int) -> dict:
    keys = ("epochs", "lr", "batch_size", "max_shift") if kind == "supervised" else (
        "mae_epochs", "mae_lr", "batch_size", "max_shift", "mask_ratio", "decoder_dim")
    return {"kind": kind, "vit": dict(sizes["vit"]), "seed": seed, "data": train.name,
            "n": len(train), **{k: sizes[k] for k in keys}}


def cache_path(kind: str, settings: dict) -> Path:
    """``<FMLAB_DATA>/models/vit-<kind>-<hash of the settings>.pt`` (its checksum sits next
    to it, in a ``.json`` file of the same name)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("models") / f"vit-{kind}-{digest}.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cached_state(path: Path) -> tuple[dict | None, str]:
    """(state_dict, "") when the cache is sound, else (None, why not)."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return None, "is not cached yet"
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (ValueError, KeyError):
        return None, "has an unreadable checksum file"
    if sha256(path) != expected:
        return None, "is corrupt (its checksum does not match)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), ""
    except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt
        return None, f"cannot be read ({type(err).__name__})"


def pretrained(kind: str = "supervised", sizes: dict | None = None, seed: int = 0,
               rebuild: bool = False, mnist: str = "auto") -> ViT:
    """The source ViT pre-trained on MNIST digits 0–4, from the cache or trained now.

    ``kind`` is ``"supervised"`` or ``"mae"``; ``sizes`` defaults to this profile's entry of
    :data:`SIZES`; ``mnist`` chooses the images as in :func:`source_task`. A missing or corrupt
    cache (or ``rebuild=True``) is rebuilt, and a one-line notice says so. The model comes back
    in eval mode, on the CPU; its ``pretraining`` dict says where it came from (``"cache"`` or
    ``"trained"``) and how long it took to train.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of pre-training {kind!r}; choose one of {KINDS}")
    with _BUILDING:
        return _pretrained(kind, sizes or profile().pick(SIZES), seed, rebuild, mnist)


def _pretrained(kind: str, sizes: dict, seed: int, rebuild: bool, mnist: str) -> ViT:
    train = source_task("train", mnist)
    settings = _settings(kind, sizes, train, seed)
    path = cache_path(kind, settings)
    seed_everything(seed)
    model = ViT(train.shape[0], len(SOURCE_CLASSES), train.shape[1], **sizes["vit"])
    state, problem = (None, "is rebuilt on request") if rebuild else _cached_state(path)
    if state is not None:
        model.load_state_dict(state)
        meta = json.loads(path.with_suffix(".json").read_text())
        model.pretraining = {"source": "cache", "path": str(path), **meta["info"]}
        return model.eval()
    print(f"The {kind} pre-trained ViT {problem} ({path.name}); pre-training it now.",
          file=sys.stderr)
    t0, cpu0 = time.perf_counter(), time.process_time()
    if kind == "supervised":
        history = train_supervised(model, train, sizes, seed)
        curve = history.train_loss
    else:
        curve = train_mae(model, train, sizes, seed)
    model.cpu().eval()
    info = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            "loss": curve, "settings": settings}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    atomic_write(path.with_suffix(".json"),
                 lambda tmp: tmp.write_text(json.dumps({"sha256": sha256(path), "info": info})))
    model.pretraining = {"source": "trained", "path": str(path), **info}
    return model
