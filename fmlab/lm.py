"""Language modelling with :class:`fmlab.models.GPT`: pre-training, held-out perplexity, exact
n-gram baselines, sampling and generation with a KV cache.

Explained in book/09_language_model.ipynb. A module of its own because it is a concern of its
own (training and using a language model), and because :mod:`fmlab.text` (the corpus and the
tokenizer) and :mod:`fmlab.models` (the networks) would each grow past ~400 lines with it.

Cross-entropy and perplexity, over the N predicted tokens of a held-out text:

    L = -(1/N) Σ_i log p(x_i | x_<i),    perplexity = exp(L).
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from .models import GPT
from .optim import warmup_cosine

# Sizes of book/09_language_model.ipynb (read with ``profile().pick(SIZES)``).
# LoRA goes on every linear layer of the blocks: the attention's and the MLP's.
LORA_TARGETS = ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.*")
SIZES = {
    "quick": {"vocab": 512, "vocab_sizes": [256, 384, 512, 1024, 2048],
              "gpt": {"context": 64, "dim": 64, "depth": 2, "heads": 4},
              "steps": 300, "batch_size": 32, "lr": 3e-3, "warmup": 30,
              "scaling_dims": [16, 32, 64],
              "target": "json", "tune_steps": 80, "tune_batch_size": 16,
              "tune_lr": {"full": 1e-3, "lora": 1e-2, "scratch": 3e-3},
              "lora_r": 4, "generate": 48, "timing_repeats": 3, "eval_tokens": None},
    "full": {"vocab": 1024, "vocab_sizes": [256, 384, 512, 1024, 2048, 4096],
             "gpt": {"context": 256, "dim": 256, "depth": 6, "heads": 16},
             "steps": 3000, "batch_size": 64, "lr": 1e-3, "warmup": 200,
             "scaling_dims": [64, 128, 256],
             "target": "email", "tune_steps": 1000, "tune_batch_size": 64,
             "tune_lr": {"full": 3e-4, "lora": 3e-3, "scratch": 1e-3},
             "lora_r": 8, "generate": 200, "timing_repeats": 5, "eval_tokens": None},
    # a token amount of work: tiny batches, held-out texts cut to their first tokens
    "smoke": {"steps": 3, "warmup": 1, "tune_steps": 2, "generate": 8, "timing_repeats": 1,
              "batch_size": 2, "tune_batch_size": 2, "eval_tokens": 1024},
}


def _need_two(tokens: torch.Tensor) -> None:
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to predict one from another, got "
                         f"{len(tokens)}")


def _check_ids(tokens: torch.Tensor, vocab_size: int) -> None:
    outside = tokens[(tokens < 0) | (tokens >= vocab_size)]
    if len(outside):
        raise ValueError(f"token id {int(outside[0])} is outside the vocabulary of "
                         f"{vocab_size}")


def batch(tokens: torch.Tensor, context: int, batch_size: int,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows at random offsets: inputs (B, T) and their next tokens (B, T)."""
    if len(tokens) <= context:
        raise ValueError(f"{len(tokens)} tokens are too few for windows of {context} + 1")
    start = torch.randint(0, len(tokens) - context, (batch_size,), generator=generator)
    rows = start[:, None] + torch.arange(context + 1)  # (B, T + 1)
    window = tokens[rows]
    return window[:, :-1], window[:, 1:]


def windows(tokens: torch.Tensor, context: int
            ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows that predict every token but the first exactly once: inputs
    and targets (W, T); the last window is shorter if need be, so it is returned apart."""
    n = (len(tokens) - 1) // context
    x = tokens[:n * context].reshape(n, context)
    y = tokens[1:n * context + 1].reshape(n, context)
    rest = (tokens[n * context:-1], tokens[n * context + 1:])
    return x, y, rest


@torch.inference_mode()
def cross_entropy(model: GPT, tokens: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over every token of ``tokens`` but the first, each
    predicted from the earlier tokens of its window of ``model.context``."""
    _need_two(tokens)
    model.eval()
    dev = next(model.parameters()).device
    x, y, (rx, ry) = windows(tokens, model.context)
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(dev))
        total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch_size].flatten().to(dev),
                                 reduction="sum").item()
        count += y[i:i + batch_size].numel()
    if len(rx):
        logits = model(rx[None].to(dev))[0]
        total += F.cross_entropy(logits, ry.to(dev), reduction="sum").item()
        count += len(ry)
    return total / count


def pretrain(model: GPT, tokens: torch.Tensor, *, steps: int, batch_size: int, lr: float,
             warmup: int, seed: int = 0, weight_decay: float = 0.1, progress=None) -> dict:
    """Next-token cross-entropy with AdamW, linear warm-up then cosine decay to lr/10
    (:func:`fmlab.optim.warmup_cosine`), gradients clipped at norm 1; only the parameters that
    require gradients train. Returns the training losses per step and the seconds it took."""
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]  # matrices decay; biases and norms do not
    rest = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: warmup_cosine(t, steps, min(warmup, steps - 1), 1.0, 0.1))
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x, y = batch(tokens, model.context, batch_size, gen)
        logits = model(x.to(dev))
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten().to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if progress is not None:
            progress.update(1)
    model.eval()
    return {"loss": torch.stack(losses).tolist(), "seconds": time.perf_counter() - start}


# --- exact n-gram baselines --------------------------------------------------------------------

def unigram(train: torch.Tensor, vocab_size: int, add: float = 1.0) -> torch.Tensor:
    """log p(w) = log (c(w) + add) / (N + add·V): the training counts, add-one smoothed."""
    _check_ids(train, vocab_size)
    counts = torch.bincount(train, minlength=vocab_size).double() + add
    return (counts / counts.sum()).log()  # (V,)


def bigram(train: torch.Tensor, vocab_size: int, add: float = 1.0) -> torch.Tensor:
    """log p(w | u) = log (c(u, w) + add) / (c(u, ·) + add·V), (V, V), rows u."""
    _check_ids(train, vocab_size)
    pairs = train[:-1] * vocab_size + train[1:]
    counts = torch.bincount(pairs, minlength=vocab_size ** 2).double()
    counts = counts.reshape(vocab_size, vocab_size) + add
    return (counts / counts.sum(1, keepdim=True)).log()


def ngram_cross_entropy(logp: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean cross-entropy (nats) of a unigram (V,) or bigram (V, V) table over every token of
    ``tokens`` but the first (the tokens a GPT predicts in :func:`cross_entropy`)."""
    _need_two(tokens)
    if logp.dim() == 1:
        return -logp[tokens[1:]].mean().item()
    return -logp[tokens[:-1], tokens[1:]].mean().item()


# --- sampling and generation -------------------------------------------------------------------

def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, the rest set to -inf."""
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k counts the tokens kept, 1..{logits.shape[-1]}, got {k}")
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (…, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al. 2020): keep the smallest set of most probable tokens whose
    probabilities sum to at least ``p``; the rest set to -inf."""
    if not 0 < p <= 1:
        raise ValueError(f"p is a probability mass in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
    drop = mass_before >= p  # the tokens after the mass has reached p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """One id per row of ``logits`` (B, V): the argmax at temperature 0, otherwise a sample
    from softmax(logits / temperature), after the top-k and nucleus filters."""
    if temperature < 0:
        raise ValueError(f"temperature is 0 (greedy) or positive, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


@torch.inference_mode()
def generate(model: GPT, prompt: torch.Tensor, n: int, *, cache: bool = True,
             generator: torch.Generator | None = None, **sampling) -> torch.Tensor:
    """``prompt`` (B, T0) followed by ``n`` new tokens, (B, T0 + n).

    Without a cache each step runs the model over the last ``context`` tokens again; with
    one, the prompt goes through once and each step feeds only the newest token. The cached
    run needs T0 + n ≤ context (positions past it would need a sliding window).
    """
    model.eval()
    if cache and prompt.shape[1] + n > model.context:
        raise ValueError(f"prompt ({prompt.shape[1]}) + {n} new tokens exceed the context "
                         f"({model.context}); generate fewer, or use cache=False")
    out = prompt
    caches = model.new_caches() if cache else None
    feed = prompt
    for _ in range(n):
        if cache:
            logits = model(feed, caches)[:, -1]  # (B, V)
        else:
            logits = model(out[:, -model.context:])[:, -1]
        new = next_token(logits, generator=generator, **sampling)[:, None]  # (B, 1)
        out = torch.cat([out, new], dim=1)
        feed = new
    return out


def count_matmul_parameters(model: GPT) -> int:
    """N in C ≈ 6N FLOPs per training token (Kaplan et al. 2020): the weights of every matrix
    product (the blocks' linear layers and the tied output layer), no biases, norms or
    position embeddings, and the token embedding once (its lookup costs nothing)."""
    blocks = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    return blocks + model.head.weight.numel()


def training_flops_per_token(model: GPT, t: int) -> int:
    """Multiply-adds × 2 of one training step per token, forward and backward (twice the
    forward): 6 N + 12 · depth · T · D, the second term the attention's two (T × T) products
    (QKᵀ and AV) over all T keys, masked or not."""
    d = model.config["dim"]
    return 6 * count_matmul_parameters(model) + 12 * len(model.blocks) * t * d


def perplexity(nats: float) -> float:
    return math.exp(nats)
