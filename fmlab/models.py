"""The networks the chapters train, for any input size and channel count.

Explained in book/01_training_cnn.ipynb (the CNNs); book/06_explanation.ipynb trains
:class:`GlobalMaxCNN`, book/07_finetuning.ipynb the :class:`ViT`, which
:class:`MaskedAutoencoder` pre-trains without labels.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _after(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a conv or pool layer: floor((size + 2p - k) / s) + 1."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"an input of size {size} is too small for a kernel of {kernel}")
    return out


class SeedCNN(nn.Module):
    """The source documents' classifier, in PyTorch:
    Conv(32, 3×3) → ReLU → MaxPool(2) → Flatten → Dense(64) → ReLU → Dense(classes).

    The seeds use 32×32×3 inputs (``SeedCNN(3, 10, 32)``); MNIST is ``SeedCNN(1, 10, 28)``.
    The convolution has no padding, as Keras' default ``padding="valid"``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = _after(_after(image_size, 3), 2, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 32, side, side)
        return self.classifier(x)  # (B, classes)


class TwoConvNet(nn.Module):
    """A stronger small CNN: Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(classes), 3×3 'same'.

    ``width`` is the first convolution's channels (the second has twice as many); the
    default 32 is the network above, ``width=16`` a cheaper one for CPU-sized runs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 width: int = 32):
        super().__init__()
        side = image_size // 2 // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 128), nn.ReLU(),
            nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, 64, s, s) -> (B, classes)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as it is usually trained today.

    The first convolution pads by 2 so that a 28×28 MNIST digit is seen as the paper's 32×32.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        side = _after(_after(_after(_after(image_size, 5, 1, 2), 2, 2), 5), 2, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet300100(nn.Module):
    """The fully connected LeNet-300-100: input → 300 → 100 → classes, ReLU between."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 300), nn.ReLU(),
            nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut
    (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small residual network: a 3×3 stem, then stages of :class:`BasicBlock` that halve the
    resolution and double the width, global average pooling, and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, ...] = (16, 32, 64), blocks_per_stage: int = 1):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        c = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(c, w, stride=2 if i > 0 and j == 0 else 1))
                c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, C, h, w) -> (B, C) -> (B, classes)


# --- The explanation chapter's classifier (book/06_explanation.ipynb) ---------------------------

class GlobalMaxCNN(nn.Module):
    """Three 3×3 conv blocks (conv, batch norm, ReLU; 2×2 max-pooling after the first two),
    global max pooling, and a linear layer.

    Global max pooling lets each channel fire wherever its pattern appears, so an object may
    sit anywhere in the image. Blocks are named (``features.block1`` .. ``block3``, ``fc``) so
    that Grad-CAM and the randomisation tests can refer to them.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4,
                 widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()

        def block(c_in, c_out, pool):
            layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        w1, w2, w3 = widths
        self.features = nn.Sequential(OrderedDict(
            block1=block(in_channels, w1, True), block2=block(w1, w2, True),
            block3=block(w2, w3, False)))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, w3, H/4, W/4)
        return self.fc(self.pool(x).flatten(1))  # (B, classes)


# --- A small Vision Transformer (book/07_finetuning.ipynb) -----------------------------------

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              return_weights: bool = False):
    """Scaled dot-product attention, written out (Vaswani et al. 2017, Eq. 1):
    softmax(q kᵀ / √d + M) v, with q (…, T, d), k (…, S, d), v (…, S, d_v).

    ``mask``, broadcastable to (…, T, S), follows ``F.scaled_dot_product_attention``: a boolean
    mask is True where a query may attend (False entries get −∞ before the softmax); a float
    mask is added to the scores. With ``return_weights`` the (…, T, S) weights come back too.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (…, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)  # each row sums to 1 over the keys
    out = weights @ v  # (…, T, d_v)
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: one fused ``qkv`` projection, ``heads`` heads of size
    dim/heads, an output projection ``proj``. ``fused=False`` runs :func:`attention` (written
    out) instead of ``F.scaled_dot_product_attention``; both give the same result."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fused = True
        self.weights: torch.Tensor | None = None  # the last attention weights when fused=False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: "KVCache | None" = None, is_causal: bool = False) -> torch.Tensor:
        """``mask`` (T, S), boolean, True where a query may attend (as :func:`attention`);
        ``is_causal``: the mask of :func:`causal_mask` (the fused kernel then skips the masked
        half); ``cache``: the keys and values of earlier positions, extended by this call's
        (the GPT's KV cache; then S = earlier + T). Without any, every token sees every other."""
        b, t, d = x.shape  # (B, T, D)
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, D/H)
        if cache is not None:
            k, v = cache.extend(k, v)  # each (B, H, S, D/H)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        else:
            mask = causal_mask(t, device=x.device) if is_causal else mask
            out, self.weights = attention(q, k, v, mask, return_weights=True)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)), GELU in the MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: "KVCache | None" = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, cache, is_causal)
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches embedded
    linearly, a class token, learned position embeddings, ``depth`` pre-norm blocks, a final
    LayerNorm, and a linear head on the class token.

    The pieces are separate methods so that fine-tuning can reach in: :meth:`embed` gives the
    tokens (B, 1 + N, D) with positions added, :meth:`encode` runs the blocks and the final
    norm, :meth:`features` is the class token's output (B, D). ``patch_size`` defaults to a
    quarter of the image side (a 4×4 grid of patches).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 patch_size: int | None = None, dim: int = 32, depth: int = 3, heads: int = 4,
                 mlp_ratio: float = 2.0):
        super().__init__()
        patch_size = patch_size or max(image_size // 4, 1)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} does not divide image_size={image_size}; "
                             "pick a divisor (or resize the images)")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                           patch_size=patch_size, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio)
        self.patch_size = patch_size
        self.num_patches = (image_size // patch_size) ** 2
        # A convolution with kernel = stride = patch is a linear map of each flattened patch.
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.pos_embed  # (B, 1 + N, D)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)  # (B, T, D)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.embed(x))[:, 0]  # the class token, (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes)

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of every block, (depth, B, heads, T, T), from the written-out
        :func:`attention` (the fused kernel does not return them)."""
        attns = [b.attn for b in self.blocks]
        try:
            for a in attns:
                a.fused = False
            self.features(x)
            return torch.stack([a.weights for a in attns])
        finally:
            for a in attns:
                a.fused, a.weights = True, None


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


MODELS = {"seedcnn": SeedCNN, "twoconv": TwoConvNet, "lenet5": LeNet5,
          "lenet300100": LeNet300100, "resnet": SmallResNet, "vit": ViT}


def build(name: str, **kwargs) -> nn.Module:
    """A model by name: one of ``MODELS``."""
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name.lower()](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- A small GPT (book/09_language_model.ipynb) ----------------------------------------------

class KVCache:
    """The keys and values one attention layer has computed so far, (B, H, S, D/H) each.

    Generation with the cache feeds only the new token through the model: its query attends
    to the cached keys and values of every earlier position, which are never recomputed.
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


def causal_mask(t: int, past: int = 0, device=None) -> torch.Tensor:
    """(T, past + T) boolean: query i (at position past + i) may attend to keys 0..past + i."""
    return torch.ones(t, past + t, dtype=torch.bool, device=device).tril(diagonal=past)


class GPT(nn.Module):
    """A small decoder-only transformer language model (GPT-2's shape, Radford et al. 2019):
    token and learned position embeddings, ``depth`` pre-norm :class:`Block` s with causal
    self-attention (each position attends to itself and earlier ones only), a final
    LayerNorm, and an output layer that shares the token embedding's weights (tied):
    logits = LN(h) Eᵀ. Weights start normal with std 0.02 (GPT-2's, without its residual
    scaling), biases zero.

    ``forward(idx)`` takes token ids (B, T), T ≤ ``context``, and returns logits (B, T, V);
    with ``caches`` (one :class:`KVCache` per block, from :meth:`new_caches`) it continues
    after the positions the caches hold.
    """

    def __init__(self, vocab_size: int, context: int = 64, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, context=context, dim=dim, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio)
        self.context = context
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        self.head.weight = self.tok_embed.weight  # tied: one (V, D) matrix

    def new_caches(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        b, t = idx.shape  # (B, T)
        past = len(caches[0]) if caches else 0
        if past + t > self.context:
            raise ValueError(f"{past + t} positions exceed the context of {self.context}: "
                             "feed at most the last `context` tokens (without a cache)")
        pos = torch.arange(past, past + t, device=idx.device)
        x = self.tok_embed(idx) + self.pos_embed(pos)  # (B, T, D)
        # Without a past, the plain causal mask; one new token attends to every cached
        # position (no mask); several new ones after a past need the mask written out.
        mask = causal_mask(t, past, idx.device) if past and t > 1 else None
        for i, block in enumerate(self.blocks):
            x = block(x, mask, caches[i] if caches else None, is_causal=not past and t > 1)
        return self.head(self.norm(x))  # (B, T, V)
