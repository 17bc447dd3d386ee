"""Public checks of the lab "A language model from scratch" (labs/09_language_model.ipynb, lab id
``language_model``).

Format: fmlab/grading/spec.py; explained in book/instructors.md. ``run`` calls the student's
code in the child and returns plain data; ``grade`` computes every reference in the parent with
plain Python and torch arithmetic (float64): byte-pair merges, causal attention, attention over
a whole prefix for the KV cache, and the nucleus of a distribution. The library versions of each
exercise (the tokenizers library, torch's attention, fmlab's own BPE, attention, KV cache and
sampling) are switched off while the student's code runs (``forbid=``).
"""
from __future__ import annotations

import copy
import math

import torch

from fmlab.grading import Question, Result, expect_close
from fmlab.grading.spec import describe

# The master notebooks beside this folder: out of a graded answer's reach.
PRIVATE = ("../*.ipynb",)
# Imported by the grading child before its sandbox closes, so that switching the tokenizers
# library off (forbid=) does not have to import it later. Where it is not installed (Colab's
# bare install of fmlab) the child skips the import and forbid skips its names.
MODULES = ("tokenizers",)

TOKENIZERS = ("tokenizers.*", "fmlab.text.merge", "fmlab.text.BPE", "fmlab.text.to_hf")
ATTENTION = ("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
             "torch.nn.functional.multi_head_attention_forward", "fmlab.models.attention",
             "fmlab.models.MultiHeadAttention", "fmlab.models.causal_mask",
             "fmlab.models.KVCache", "fmlab.models.GPT")
SAMPLING = ("fmlab.lm.top_p_filter", "fmlab.lm.top_k_filter", "fmlab.lm.next_token",
            "fmlab.lm.generate")


# --- q1: byte-pair encoding ------------------------------------------------------------------------

def reference_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Every occurrence of ``pair``, left to right and without overlaps, replaced by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def reference_encode(text: str, merges: list) -> list[int]:
    """UTF-8 bytes, then each learned merge in the order it was learned (``merges[i]`` makes
    token ``256 + i``)."""
    ids = list(text.encode("utf-8"))
    for i, pair in enumerate(merges):
        ids = reference_merge(ids, tuple(pair), 256 + i)
    return ids


def train_merges(text: str, n_merges: int) -> list[list[int]]:
    """Byte-level BPE training (ties go to the pair seen first): the merges, in learned order."""
    ids, merges = list(text.encode("utf-8")), []
    for i in range(n_merges):
        counts: dict[tuple[int, int], int] = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=counts.get)
        merges.append(list(best))
        ids = reference_merge(ids, best, 256 + i)
    return merges


def prepare_q1(case):
    if "train_on" in case:
        case["merges"] = train_merges(case["train_on"], case["n_merges"])
    return case


def run_q1(ns, case):
    if case["function"] == "merge":
        ids = list(case["ids"])
        got = ns["merge"](ids, tuple(case["pair"]), case["new_id"])
        return {"ids": got, "input_after": ids}
    merges = [tuple(p) for p in case["merges"]]
    return {"ids": ns["encode"](case["text"], merges)}


def _is_id_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(type(i) is int for i in value)


def grade_q1(case, got):
    if not isinstance(got, dict) or "ids" not in got:
        return Result.fail(f"expected the returned ids, got {describe(got)}")
    ids = got["ids"]
    if not _is_id_list(ids):
        return Result.fail(f"{case['function']} should return a list of Python ints, got {describe(ids)}")
    if case["function"] == "merge":
        if list(got["input_after"]) != list(case["ids"]):
            return Result.fail("merge changed the list it was given; build and return a new list")
        expected = reference_merge(case["ids"], tuple(case["pair"]), case["new_id"])
        if list(ids) == expected:
            return Result.ok()
        return Result.fail(f"merge({case['ids']}, {tuple(case['pair'])}, {case['new_id']}): got "
                           f"{list(ids)}, expected {expected} (left to right, no overlaps)")
    expected = reference_encode(case["text"], case["merges"])
    if list(ids) == expected:
        return Result.ok()
    from_chars = [ord(c) for c in case["text"]]
    for i, pair in enumerate(case["merges"]):
        from_chars = reference_merge(from_chars, tuple(pair), 256 + i)
    if list(ids) == from_chars:
        return Result.fail(f"encode({case['text']!r}) should start from the text's UTF-8 bytes "
                           f"({len(case['text'].encode('utf-8'))} of them), not its characters")
    return Result.fail(f"encode({case['text']!r}, {len(case['merges'])} merges): got {list(ids)}, "
                       f"expected {expected} (apply the merges in the order they were learned)")


CASES_Q1 = [
    {"name": "merge: a pair that overlaps itself (aaa)", "function": "merge",
     "ids": [97, 97, 97], "pair": [97, 97], "new_id": 256},
    {"name": "merge: several occurrences, one at the end", "function": "merge",
     "ids": [1, 2, 3, 1, 2, 2, 1, 2], "pair": [1, 2], "new_id": 300},
    {"name": "merge: no occurrence", "function": "merge", "ids": [5, 6, 7], "pair": [6, 5],
     "new_id": 256},
    # (b, c) was learned before (a, b): merging the more frequent (a, b) first is wrong here
    {"name": "encode: learned order, not frequency", "function": "encode", "text": "abcabab",
     "merges": [[98, 99], [97, 98]]},
    {"name": "encode: merges that use earlier merges' tokens", "function": "encode",
     "text": "abcabcab abc", "merges": [[97, 98], [256, 99], [257, 257], [32, 257]]},
    {"name": "encode: non-ASCII text (UTF-8 bytes)", "function": "encode", "text": "naïve café",
     "merges": [[195, 169], [99, 97], [257, 102], [258, 256]]},
]


# --- q2: causal self-attention -------------------------------------------------------------------

def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def prepare_q2(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    shape = (case["B"], case["H"], case["T"], case["D"])
    for name in "qkv":
        case[name] = _randn(g, *shape, dtype=dtype, scale=case.get("scale", 1.0))
    return case


def reference_causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D) with the future masked to -inf) v, in float64."""
    q, k, v = q.double(), k.double(), v.double()
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def run_q2(ns, case):
    return ns["causal_attention"](case["q"].clone(), case["k"].clone(), case["v"].clone())


def _tolerance(dtype):
    return dict(atol=1e-10, rtol=1e-8) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)


def grade_q2(case, got):
    q = case["q"]
    expected = reference_causal_attention(q, case["k"], case["v"]).to(q.dtype)
    return expect_close(got, expected, **_tolerance(q.dtype), what="the attention output")


CASES_Q2 = [
    {"name": "B=1, H=1, T=4, D=8", "seed": 0, "B": 1, "H": 1, "T": 4, "D": 8},
    {"name": "B=2, H=3, T=7, D=16", "seed": 1, "B": 2, "H": 3, "T": 7, "D": 16},
]


# --- q3: a KV-cached attention step --------------------------------------------------------------

def prepare_q3(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    B, D = case["B"], case["D"]
    total = case.get("prefix", 0) + case["steps"]
    case["x"] = _randn(g, B, total, D, dtype=dtype)
    for name in ("Wq", "Wk", "Wv"):
        case[name] = _randn(g, D, D, dtype=dtype, scale=case.get("scale", 1.0) / math.sqrt(D))
    return case


def _heads(y, n_heads):
    """(B, T, D) -> (B, H, T, D/H): head h holds features h*D/H .. (h+1)*D/H - 1."""
    B, T, D = y.shape
    return y.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def reference_cached(case):
    """Outputs of the last ``steps`` tokens and the final cache, recomputed over the whole
    sequence at once (float64)."""
    x, H, P = case["x"].double(), case["H"], case.get("prefix", 0)
    q, k, v = (_heads(x @ case[w].double(), H) for w in ("Wq", "Wk", "Wv"))
    y = reference_causal_attention(q, k, v)  # (B, H, T, D/H)
    B, _, T, _ = y.shape
    y = y.transpose(1, 2).reshape(B, T, -1)
    return y[:, P:], k, v


def _initial_cache(case):
    x, H, P, dtype = case["x"], case["H"], case.get("prefix", 0), case["x"].dtype
    if P == 0:
        empty = torch.zeros(case["B"], H, 0, case["D"] // H, dtype=dtype)
        return {"k": empty, "v": empty.clone()}
    prefix = x[:, :P].double()
    return {"k": _heads(prefix @ case["Wk"].double(), H).to(dtype),
            "v": _heads(prefix @ case["Wv"].double(), H).to(dtype)}


def run_q3(ns, case):
    step, P = ns["attend_with_cache"], case.get("prefix", 0)
    cache = _initial_cache(case)
    outputs = []
    for t in range(P, P + case["steps"]):
        y, cache = step(case["x"][:, t].clone(), cache, case["Wq"].clone(), case["Wk"].clone(),
                        case["Wv"].clone(), case["H"])
        outputs.append(y)
        if not isinstance(cache, dict):
            break
    return {"outputs": outputs, "cache": cache}


def grade_q3(case, got):
    if not isinstance(got, dict) or not isinstance(got.get("cache"), dict):
        return Result.fail("attend_with_cache should return (y, cache), with cache a dict of "
                           f"'k' and 'v'; got {describe(got.get('cache') if isinstance(got, dict) else got)}")
    outputs = got["outputs"]
    if not all(isinstance(y, torch.Tensor) for y in outputs):
        return Result.fail("attend_with_cache's y should be a tensor of shape (B, D)")
    y_ref, k_ref, v_ref = reference_cached(case)
    dtype, P = case["x"].dtype, case.get("prefix", 0)
    tol = _tolerance(dtype)
    for i, y in enumerate(outputs):
        r = expect_close(y, y_ref[:, i].to(dtype), **tol,
                         what=f"y of token {P + i} (after {P + i} cached tokens)")
        if not r.passed:
            return Result.fail(r.message + ("; the first token must attend to itself"
                                            if P + i == 0 else ""))
    for name, ref in (("k", k_ref), ("v", v_ref)):
        r = expect_close(got["cache"].get(name), ref.to(dtype), **tol,
                         what=f"the final cache's {name!r} (B, H, T, D/H)")
        if not r.passed:
            return r
    return Result.ok()


CASES_Q3 = [
    {"name": "one head, 5 steps from an empty cache", "seed": 0, "B": 1, "D": 8, "H": 1,
     "steps": 5},
    {"name": "3 heads, batch of 2, 6 steps", "seed": 1, "B": 2, "D": 12, "H": 3, "steps": 6},
]


# --- q4: nucleus (top-p) filtering and sampling --------------------------------------------------

def reference_nucleus(logits, top_p):
    """The smallest set of most probable tokens whose probability reaches ``top_p`` (ties: the
    lower index first; ``top_p >= 1`` keeps every token), renormalised; float64."""
    probs = torch.softmax(logits.double(), dim=-1)
    if top_p >= 1:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_p.cumsum(-1) - sorted_p  # probability of the tokens ranked above each one
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def _case_logits(case):
    if "logits" in case:
        return torch.tensor(case["logits"], dtype=torch.float32)
    g = torch.Generator().manual_seed(case["seed"])
    return _randn(g, case["B"], case["V"], scale=case.get("scale", 2.0))


def prepare_q4(case):
    case["logits_tensor"] = _case_logits(case)
    return case


def run_q4(ns, case):
    logits = case["logits_tensor"]
    if case["function"] == "filter":
        return ns["nucleus_filter"](logits.clone(), case["top_p"])
    rows = logits.expand(case["samples"], -1).clone()  # one row, drawn from many times
    draws = [ns["nucleus_sample"](rows.clone(), case["top_p"],
                                  torch.Generator().manual_seed(case["seed"]))
             for _ in range(2)]
    return draws


def grade_q4(case, got):
    logits = case["logits_tensor"]
    expected = reference_nucleus(logits, case["top_p"])
    if case["function"] == "filter":
        return expect_close(got, expected, atol=1e-6, rtol=1e-5,
                            what=f"nucleus_filter(logits, top_p={case['top_p']})")
    first, second = got
    n = case["samples"]
    if not isinstance(first, torch.Tensor) or first.shape != (n,) or first.dtype != torch.int64:
        return Result.fail(f"nucleus_sample should return a tensor of {n} token ids (int64), one "
                           f"per row, got {describe(first)}")
    if not torch.equal(first, second):
        return Result.fail("two calls with generators seeded alike drew different tokens: draw "
                           "with the generator you are given (torch.multinomial(..., generator=g))")
    p = expected[0]
    if ((first < 0) | (first >= p.numel())).any():
        return Result.fail("a drawn token id is out of range")
    outside = int((p[first] == 0).sum())
    if outside:
        return Result.fail(f"{outside} of {n} draws are tokens outside the nucleus (top_p="
                           f"{case['top_p']}); sample from nucleus_filter's probabilities")
    freq = torch.bincount(first, minlength=p.numel()).double() / n
    tv = 0.5 * (freq - p).abs().sum().item()
    # A correct sampler's distance is about 0.01 for these sizes; 0.05 is many standard errors.
    if tv > 0.05:
        return Result.fail(f"the draws' frequencies are {tv:.3f} (total variation) from the "
                           "nucleus probabilities; draw in proportion to them")
    return Result.ok()


CASES_Q4 = [
    {"name": "filter: top_p=0.9, batch of 3", "function": "filter", "seed": 0, "B": 3, "V": 20,
     "top_p": 0.9},
    {"name": "filter: ties (lower index first)", "function": "filter",
     "logits": [[0.0, 2.0, 1.0, 1.0, 1.0, -1.0]], "top_p": 0.52},
    {"name": "filter: top_p=1.0 keeps everything", "function": "filter",
     "logits": [[3.0, 0.0, -3.0, 1.0]], "top_p": 1.0},
    {"name": "sample: 4000 draws, top_p=0.8", "function": "sample", "seed": 1, "B": 1, "V": 12,
     "top_p": 0.8, "samples": 4000},
]


QUESTIONS = [
    Question(id="q1", points=3, title="Byte-pair encoding: one merge and the encoder",
             requires=("merge", "encode"), run=run_q1, grade=grade_q1, prepare=prepare_q1,
             timeout=10, forbid=TOKENIZERS, cases=lambda: copy.deepcopy(CASES_Q1)),
    Question(id="q2", points=3, title="Causal self-attention", requires=("causal_attention",),
             run=run_q2, grade=grade_q2, prepare=prepare_q2, timeout=10, forbid=ATTENTION,
             cases=lambda: copy.deepcopy(CASES_Q2)),
    Question(id="q3", points=3, title="A KV-cached attention step",
             requires=("attend_with_cache",), run=run_q3, grade=grade_q3, prepare=prepare_q3,
             timeout=10, forbid=ATTENTION, cases=lambda: copy.deepcopy(CASES_Q3)),
    Question(id="q4", points=3, title="Nucleus (top-p) filtering and sampling",
             requires=("nucleus_filter", "nucleus_sample"), run=run_q4, grade=grade_q4,
             prepare=prepare_q4, timeout=10, forbid=SAMPLING,
             cases=lambda: copy.deepcopy(CASES_Q4)),
]
