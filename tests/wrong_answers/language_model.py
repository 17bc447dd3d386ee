"""Plausible wrong answers to the language-model lab; each must keep at most half its points.

Three per question, so that tests/test_labs.py grades three rounds (each grading costs the
suite a few seconds).

Each entry is Python source appended as a last cell to labs/09_language_model.ipynb; it
redefines one exercise wrongly (the namespace already holds ``torch``, ``math`` and the master's
other answers, so a wrong ``merge`` is also what the master's ``encode`` calls).
"""

_MERGE_RIGHT_TO_LEFT = '''
def merge(ids, pair, new_id):
    out, i = [], len(ids) - 1
    while i >= 0:
        if i >= 1 and ids[i - 1] == pair[0] and ids[i] == pair[1]:
            out.append(new_id)
            i -= 2
        else:
            out.append(ids[i])
            i -= 1
    return out[::-1]
'''

_ENCODE_BY_COUNT = '''
def encode(text, merges):
    ids = list(text.encode("utf-8"))
    new_id = {tuple(p): 256 + i for i, p in enumerate(merges)}
    while len(ids) >= 2:
        counts = {}
        for p in zip(ids, ids[1:]):
            counts[p] = counts.get(p, 0) + 1
        present = [p for p in counts if p in new_id]
        if not present:
            break
        pair = max(present, key=counts.get)  # the most frequent pair here, not the first learned
        ids = merge(ids, pair, new_id[pair])
    return ids
'''

_ENCODE_CHARACTERS = '''
def encode(text, merges):
    ids = [ord(c) for c in text]  # code points, not UTF-8 bytes
    for i, pair in enumerate(merges):
        ids = merge(ids, tuple(pair), 256 + i)
    return ids
'''

_ATTENTION = '''
def causal_attention(q, k, v):
    T, D = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / {scale}
    future = torch.ones(T, T, dtype=torch.bool).triu({diagonal})
    {body}
'''
_BEFORE = '''scores = scores.masked_fill(future, {fill})
    return torch.softmax(scores, dim=-1) @ v'''
_AFTER = '''weights = torch.softmax(scores, dim=-1).masked_fill(future, 0.0)
    return weights @ v'''


def _attention(scale="math.sqrt(D)", diagonal=1, body=_BEFORE, fill='float("-inf")'):
    return _ATTENTION.format(scale=scale, diagonal=diagonal, body=body.format(fill=fill))


_CACHE = '''
def attend_with_cache(x_new, cache, Wq, Wk, Wv, n_heads):
    B, D = x_new.shape
    d_head = D // n_heads
    q, k, v = ({split} for W in (Wq, Wk, Wv))
    keys = torch.cat([cache["k"], k], dim=2)
    values = torch.cat([cache["v"], v], dim=2)
    {attend}
    return y, {returned}
'''
_SPLIT = "(x_new @ W).view(B, n_heads, 1, d_head)"
_ATTEND = '''weights = torch.softmax(q @ keys.transpose(-2, -1) / {scale}, dim=-1)
    y = (weights @ values).reshape(B, D)'''
_ATTEND_OLD = '''if cache["k"].shape[2] == 0:
        y = v.reshape(B, D)  # nothing cached yet
    else:
        weights = torch.softmax(q @ cache["k"].transpose(-2, -1) / math.sqrt(d_head), dim=-1)
        y = (weights @ cache["v"]).reshape(B, D)'''


def _cache(split=_SPLIT, attend=_ATTEND, scale="math.sqrt(d_head)",
           returned='{"k": keys, "v": values}'):
    return _CACHE.format(split=split, attend=attend.format(scale=scale), returned=returned)


_FILTER = '''
def nucleus_filter(logits, top_p):
    probs = torch.softmax(logits, dim=-1)
    if top_p >= 1:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    {keep}
    {out}
'''
_KEEP = "keep_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p"
_KEEP_CROSSING_OUT = '''keep_sorted = sorted_probs.cumsum(dim=-1) < top_p
    keep_sorted[..., 0] = True  # at least the most probable token'''
_OUT = '''keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)'''
_OUT_SORTED = '''kept = sorted_probs * keep_sorted  # still in sorted order
    return kept / kept.sum(dim=-1, keepdim=True)'''


def _filter(keep=_KEEP, out=_OUT):
    return _FILTER.format(keep=keep, out=out)


_SAMPLE = '''
def nucleus_sample(logits, top_p, generator):
    probs = {probs}
    return torch.multinomial(probs, 1{generator}).squeeze(1)
'''


def _sample(probs="nucleus_filter(logits, top_p)", generator=", generator=generator"):
    return _SAMPLE.format(probs=probs, generator=generator)


WRONG = {
    "q1": {
        "merge_right_to_left": _MERGE_RIGHT_TO_LEFT,
        "merges_in_count_order": _ENCODE_BY_COUNT,
        "characters_not_bytes": _ENCODE_CHARACTERS,
    },
    "q2": {
        "mask_after_the_softmax": _attention(body=_AFTER),
        "mask_hides_the_token_itself": _attention(diagonal=0),
        "mask_shows_the_next_token": _attention(diagonal=2),
    },
    "q3": {
        "attends_before_appending": _cache(attend=_ATTEND_OLD),
        "scaled_by_the_model_width": _cache(scale="math.sqrt(D)"),
        "cache_keeps_the_new_token_only": _cache(returned='{"k": k, "v": v}'),
    },
    "q4": {
        "crossing_token_left_out": _filter(keep=_KEEP_CROSSING_OUT),
        "left_in_sorted_order": _filter(out=_OUT_SORTED),
        "sampler_ignores_the_generator": _sample(generator=""),
    },
}
