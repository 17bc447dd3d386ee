"""The small GPT (fmlab.models.GPT) and language modelling (fmlab.lm)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fmlab import finetune as ft
from fmlab import lm
from fmlab.models import GPT, attention, causal_mask, count_parameters


def small(**kw):
    torch.manual_seed(0)
    return GPT(**{"vocab_size": 50, "context": 16, "dim": 32, "depth": 2, "heads": 4, **kw})


def test_causal_mask_matches_pytorch():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attention(q, k, v, causal_mask(10)), ref, atol=1e-6)
    assert causal_mask(2, 3).tolist() == [[True] * 4 + [False], [True] * 5]


def test_gpt_is_causal_tied_and_counted():
    model = small().eval()
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        out = model(x)
        x2 = x.clone()
        x2[:, 8] = (x2[:, 8] + 1) % 50
        assert torch.allclose(model(x2)[:, :8], out[:, :8], atol=1e-6)
        for b in model.blocks:
            b.attn.fused = False
        assert torch.allclose(model(x), out, atol=1e-5)
    assert model.head.weight is model.tok_embed.weight
    d, n = 32, count_parameters(model)
    assert n == 50 * d + 16 * d + 2 * (12 * d * d + 13 * d) + 2 * d
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_training_flops_are_6n_plus_attention():
    model = small()
    for b in model.blocks:
        b.attn.fused = False
    x = torch.randint(0, 50, (2, 16))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    assert counter.get_total_flops() == lm.training_flops_per_token(model, 16) * x.numel()


def test_vit_still_sees_every_token():
    from fmlab.models import ViT
    vit = ViT(1, 10, 28, dim=16, depth=1, heads=2).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        fused = vit(x)
        vit.blocks[0].attn.fused = False
        assert torch.allclose(vit(x), fused, atol=1e-5)


def test_kv_cache_gives_the_same_tokens_and_logits():
    model = small().eval()
    prompt = torch.randint(0, 50, (2, 4))
    cached = lm.generate(model, prompt, 12, temperature=0)
    assert torch.equal(cached, lm.generate(model, prompt, 12, temperature=0, cache=False))
    caches = model.new_caches()
    with torch.no_grad():
        first = model(cached[:, :10], caches)  # several tokens, then several more after a past
        rest = model(cached[:, 10:], caches)
        whole = model(cached)
    assert torch.allclose(torch.cat([first, rest], 1), whole, atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        lm.generate(model, prompt, 13)


def test_sampling_filters():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert lm.top_k_filter(logits, 2).isfinite().tolist() == [[True, False, True, False]]
    p = logits.softmax(-1)[0]  # 0.64, 0.09, 0.24, 0.03
    assert lm.top_p_filter(logits, 0.5).isfinite().tolist() == [[True, False, False, False]]
    kept = lm.top_p_filter(logits, 0.7).isfinite()[0]
    assert kept.tolist() == [True, False, True, False] and p[kept].sum() >= 0.7
    assert lm.next_token(logits, temperature=0).item() == 0
    g = torch.Generator().manual_seed(0)
    draws = [lm.next_token(logits, top_k=1, generator=g).item() for _ in range(5)]
    assert draws == [0] * 5


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="token id 3 is outside the vocabulary of 3"):
        lm.unigram(torch.tensor([0, 3, 1]), 3)
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary of 3"):
        lm.bigram(torch.tensor([0, -1, 1]), 3)
    logits = torch.zeros(1, 4)
    for k in (0, 5):
        with pytest.raises(ValueError, match="k counts the tokens kept"):
            lm.top_k_filter(logits, k)
    with pytest.raises(ValueError, match="temperature"):
        lm.next_token(logits, temperature=-1.0)
    one = torch.tensor([1])
    with pytest.raises(ValueError, match="need at least 2 tokens"):
        lm.ngram_cross_entropy(lm.unigram(one, 3), one)
    with pytest.raises(ValueError, match="need at least 2 tokens"):
        lm.cross_entropy(small(), one)


def test_ngram_baselines_are_exact():
    train = torch.tensor([0, 1, 2, 1, 2, 0, 1])
    held = torch.tensor([1, 2, 0])
    uni, bi = lm.unigram(train, 3), lm.bigram(train, 3)
    # p(2) = p(0) = (2 + 1)/(7 + 3); p(2|1) = (2 + 1)/(2 + 3), p(0|2) = (1 + 1)/(2 + 3)
    assert abs(lm.ngram_cross_entropy(uni, held) + torch.tensor([0.3, 0.3]).log().mean()) < 1e-6
    expected = -(torch.tensor([3 / 5, 2 / 5]).log().mean())
    assert abs(lm.ngram_cross_entropy(bi, held) - expected) < 1e-6


def test_pretraining_lowers_the_loss_and_lora_wraps_the_gpt():
    tokens = torch.arange(400) % 7  # a periodic text: easy to learn
    model = small(vocab_size=7)
    before = lm.cross_entropy(model, tokens)
    lm.pretrain(model, tokens, steps=30, batch_size=8, lr=3e-3, warmup=3)
    assert lm.cross_entropy(model, tokens) < before - 0.5
    tuned = copy.deepcopy(model)
    names = ft.add_lora(tuned, lm.LORA_TARGETS, r=2, alpha=4.0)
    assert len(names) == 2 * 4  # qkv, proj and the MLP's two per block
    ft.freeze(tuned, ("*.A", "*.B"))
    lm.pretrain(tuned, (tokens + 1) % 7, steps=5, batch_size=8, lr=1e-2, warmup=1)
    ft.remove_lora(tuned)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                 model.state_dict().values()))
