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
import torch.nn.functional as F
from torch import nn

from . import data as fdata
from .models import Block, ViT
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


class MaskedAutoencoder(nn.Module):
    """A masked autoencoder around a :class:`ViT` encoder (He et al. 2022).

    Per image, ``mask_ratio`` of the patches are hidden at random. The encoder sees the class
    token and the visible patches only (with their position embeddings); a one-block decoder
    gets the encoded tokens back in place, a shared learned mask token everywhere else, and
    predicts each hidden patch's pixels, normalised per patch. The loss is the mean squared
    error over the hidden patches.
    """

    def __init__(self, encoder: ViT, decoder_dim: int = 32, mask_ratio: float = 0.75):
        super().__init__()
        cfg = encoder.config
        self.encoder, self.mask_ratio, self.patch = encoder, mask_ratio, encoder.patch_size
        self.decoder_embed = nn.Linear(cfg["dim"], decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + encoder.num_patches, decoder_dim))
        self.decoder = Block(decoder_dim, cfg["heads"], cfg["mlp_ratio"])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.predict = nn.Linear(decoder_dim, self.patch ** 2 * cfg["in_channels"])
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*p*p, N), in patch_embed's order
        return patches.transpose(1, 2)  # (B, N, C*p*p)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        tokens = self.encoder.embed(x)  # (B, 1 + N, D), positions added
        b, n = len(x), tokens.shape[1] - 1
        keep_n = max(1, round(n * (1 - self.mask_ratio)))
        noise = torch.rand(b, n, generator=generator).to(x.device)
        keep = noise.argsort(1)[:, :keep_n]  # (B, K) indices of visible patches
        visible = tokens[:, 1:].gather(1, keep[..., None].expand(-1, -1, tokens.shape[2]))
        encoded = self.decoder_embed(self.encoder.encode(torch.cat([tokens[:, :1], visible], 1)))
        full = self.mask_token.expand(b, n, -1).clone()  # (B, N, Dd)
        full.scatter_(1, keep[..., None].expand(-1, -1, full.shape[2]), encoded[:, 1:])
        full = torch.cat([encoded[:, :1], full], 1) + self.decoder_pos
        pred = self.predict(self.decoder_norm(self.decoder(full)))[:, 1:]  # (B, N, C*p*p)
        target = self.patchify(x)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()  # each patch normalised
        hidden = torch.ones(b, n, device=x.device).scatter_(1, keep, 0.0)  # 1 where hidden
        per_patch = ((pred - target) ** 2).mean(-1)  # (B, N)
        return (per_patch * hidden).sum() / hidden.sum()


def train_mae(model: ViT, train: fdata.Dataset, sizes: dict, seed: int = 0) -> list[float]:
    """Pre-train ``model`` as the encoder of a :class:`MaskedAutoencoder`; the mean loss per
    epoch comes back. AdamW with weight decay 0.05 and a cosine decay, as He et al. (2022)."""
    mae = MaskedAutoencoder(model, sizes["decoder_dim"], sizes["mask_ratio"]).to(device())
    opt = torch.optim.AdamW(mae.parameters(), lr=sizes["mae_lr"], weight_decay=0.05)
    steps = sizes["mae_epochs"] * math.ceil(len(train) / sizes["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    x_all = train.x.to(device())
    losses = []
    for _ in range(sizes["mae_epochs"]):
        total = torch.zeros((), device=x_all.device)
        for xb, _ in fdata.batches(x_all, train.y.to(device()), sizes["batch_size"], generator=gen):
            loss = mae(fdata.random_shift(xb, sizes["max_shift"], gen), gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(xb)
        losses.append(total.item() / len(train))
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
