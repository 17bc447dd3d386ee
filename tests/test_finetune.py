"""The ViT, pre-training cache and adaptation methods of fmlab.models / pretrain / finetune."""
import copy
import fnmatch

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmlab import finetune as ft
from fmlab import pretrain
from fmlab.data import Dataset
from fmlab.models import ViT, attention

TINY = {"vit": {"dim": 8, "depth": 1, "heads": 2, "mlp_ratio": 2.0}, "epochs": 1, "lr": 3e-3,
        "batch_size": 256, "max_shift": 1, "mae_epochs": 1, "mae_lr": 3e-3, "mask_ratio": 0.75,
        "decoder_dim": 8}


def small_vit(classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    return ViT(1, classes, 28, **{"dim": 16, "depth": 2, "heads": 2, **kw})


def synthetic(n=40, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % classes,
                   [str(c) for c in range(classes)], "synthetic")


# --- attention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "causal"])
def test_attention_equals_sdpa(mask_kind):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 5, 8, generator=g)
    k, v = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 7, 6, generator=g)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(5, 7, generator=g) > 0.4
        mask[:, 0] = True  # no query without a key
    elif mask_kind == "float":
        mask = torch.randn(2, 1, 5, 7, generator=g)
    elif mask_kind == "causal":
        mask = torch.ones(5, 7, dtype=torch.bool).tril()
    ours = attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert ours.shape == (2, 3, 5, 6)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_vit_written_out_attention_gives_the_same_model():
    model = small_vit()
    x = torch.rand(4, 1, 28, 28)
    fused = model(x)
    maps = model.attention_maps(x)
    assert maps.shape == (2, 4, 2, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 2, 17))
    for b in model.blocks:
        b.attn.fused = False
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)
    assert all(b.attn.weights is not None for b in model.blocks)


def test_vit_rejects_a_patch_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        ViT(1, 10, 28, patch_size=5)


# --- freezing ----------------------------------------------------------------------------------

def test_freeze_counts_and_frozen_weights_do_not_move():
    model = small_vit()
    assert ft.freeze(model, ("head.*",)) == 16 * 5 + 5
    expected = sum(p.numel() for n, p in model.named_parameters()
                   if fnmatch.fnmatchcase(n, "blocks.1.*") or n.startswith("head."))
    assert ft.freeze(model, ("blocks.1.*", "head.*")) == expected
    assert ft.freeze(model, ()) == 0
    assert ft.freeze(model, ("*",)) == sum(p.numel() for p in model.parameters())
    ft.freeze(model, ("head.*",))  # from all-trainable back to the head only
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}


# --- LoRA --------------------------------------------------------------------------------------

def test_lora_zero_init_leaves_outputs_unchanged_and_counts():
    model = small_vit()
    x = torch.rand(6, 1, 28, 28)
    before = model(x)
    ft.freeze(model, ())
    names = ft.add_lora(model, r=3, alpha=6.0)
    assert names == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv",
                     "blocks.1.attn.proj"]
    assert torch.equal(model(x), before)  # B = 0: exactly the source model
    layer = model.blocks[0].attn.qkv
    assert layer.A.abs().sum() > 0 and layer.B.abs().sum() == 0
    assert ft.count_trainable(model) == 2 * (3 * (16 + 48) + 3 * (16 + 16))
    assert not layer.base.weight.requires_grad


def test_lora_merge_unmerge_and_removal():
    source = small_vit()
    model = copy.deepcopy(source)
    ft.freeze(model, ())
    ft.add_lora(model, r=2, alpha=4.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ft.LoRALinear):
                m.B.normal_()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        adapted = model(x)
        assert (adapted - source(x)).abs().max() > 1e-3  # the adapter does something
        layer = model.blocks[0].attn.qkv
        merged = layer.merge()
        assert type(merged) is nn.Linear
        torch.testing.assert_close(merged.weight, layer.base.weight + 2.0 * layer.B @ layer.A)
        adapters = ft.merge_lora(model)
        assert not any(isinstance(m, ft.LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-5)
        ft.unmerge_lora(model, adapters)
        assert torch.equal(model(x), adapted)
        ft.remove_lora(model)
    assert model.state_dict().keys() == source.state_dict().keys()
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # bit for bit
    assert torch.equal(model(x), source(x))


def test_lora_matches_peft():
    peft = pytest.importorskip("peft")

    class Wrapper(nn.Module):
        def __init__(self, fc):
            super().__init__()
            self.fc = fc

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    ours = ft.LoRALinear(copy.deepcopy(base), r=3, alpha=5.0)
    theirs = peft.get_peft_model(Wrapper(copy.deepcopy(base)), peft.LoraConfig(
        r=3, lora_alpha=5, lora_dropout=0.0, target_modules=["fc"]))
    with torch.no_grad():
        ours.B.normal_()
        layer = theirs.base_model.model.fc
        layer.lora_A["default"].weight.copy_(ours.A)
        layer.lora_B["default"].weight.copy_(ours.B)
    x = torch.randn(9, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-5)
        merged = theirs.merge_and_unload().fc
        torch.testing.assert_close(ours.merge().weight, merged.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours.merge().bias, merged.bias)


# --- adapters and BitFit -----------------------------------------------------------------------

def test_adapter_zero_init_leaves_outputs_unchanged_and_counts():
    model = small_vit()
    x = torch.rand(6, 1, 28, 28)
    before = model(x)
    ft.freeze(model, ())
    names = ft.add_adapters(model, bottleneck=3)
    assert names == ["blocks.0.attn.proj", "blocks.0.mlp.2", "blocks.1.attn.proj",
                     "blocks.1.mlp.2"]
    assert torch.equal(model(x), before)  # W_up = 0, b_up = 0: exactly the source model
    layer = model.blocks[0].mlp[2]
    assert layer.up.weight.abs().sum() == 0 and layer.down.weight.abs().sum() > 0
    # Houlsby et al.: 2·m·d + m + d per adapter; two adapters per block, here d = 16, m = 3
    assert ft.count_trainable(model) == 2 * 2 * (2 * 3 * 16 + 3 + 16)
    assert not layer.base.weight.requires_grad


def test_adapter_computes_its_formula_and_removes_bit_for_bit():
    source = small_vit()
    model = copy.deepcopy(source)
    ft.add_adapters(model, bottleneck=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ft.AdapterLinear):
                m.up.weight.normal_()
                m.up.bias.normal_()
    layer = model.blocks[1].attn.proj
    x = torch.randn(5, 7, 16)
    with torch.no_grad():  # y = h + W_up GELU(W_down h + b_down) + b_up, h = W x + b
        h = x @ layer.base.weight.T + layer.base.bias
        inner = h @ layer.down.weight.T + layer.down.bias
        gelu = 0.5 * inner * (1 + torch.erf(inner / 2 ** 0.5))  # GELU, exact form
        expected = h + gelu @ layer.up.weight.T + layer.up.bias
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        images = torch.rand(4, 1, 28, 28)
        assert (model(images) - source(images)).abs().max() > 1e-3  # the adapters act
        ft.remove_adapters(model)
    assert model.state_dict().keys() == source.state_dict().keys()
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert torch.equal(model(images), source(images))


def test_adapter_method_trains_adapters_and_head_only():
    source = small_vit()
    model = ft.build("adapter", source, 3, bottleneck=5)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    places = ("blocks.0.attn.proj", "blocks.0.mlp.2", "blocks.1.attn.proj", "blocks.1.mlp.2")
    assert names == {f"{place}.{lin}.{w}" for place in places for lin in ("down", "up")
                     for w in ("weight", "bias")} | {"head.weight", "head.bias"}
    assert ft.count_trainable(model) == 2 * 2 * (2 * 5 * 16 + 5 + 16) + 16 * 3 + 3


def test_bitfit_trains_exactly_the_biases_and_the_head():
    source = small_vit()  # dim 16, depth 2, MLP width 32
    model = ft.build("bitfit", source, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert trainable == biases | {"head.weight"}
    assert "patch_embed.bias" in biases and "blocks.1.norm2.bias" in biases
    assert not {n for n in trainable if n.endswith("weight")} - {"head.weight"}
    d, hid = 16, 32
    per_block = 3 * d + d + hid + d + 2 * d  # W_QKV, W_O, the MLP's two Linears, 2 LayerNorms
    # the patch embedding, two blocks, the final LayerNorm, the head (weight and bias)
    assert ft.count_trainable(model) == d + 2 * per_block + d + (d * 3 + 3)


# --- prompts and adaptation --------------------------------------------------------------------

def test_prompt_tuning_trains_prompts_and_head_only_and_removes_cleanly():
    source = small_vit()
    model = ft.build("prompt", source, 3, prompts=2)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"prompts", "head.weight", "head.bias"}
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    vit = model.remove()
    for k, v in source.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(vit.state_dict()[k], v)


@pytest.mark.parametrize("method", ft.METHODS)
def test_adapt_trains_only_what_the_method_says(method):
    source = small_vit()
    original = copy.deepcopy(source.state_dict())
    train, val = synthetic(30), synthetic(10, seed=1)
    out = ft.adapt(method, source, train, val, steps=3, batch_size=8, seed=0)
    assert out.history.epochs >= 1 and 0 < out.trainable <= out.total
    for k, v in source.state_dict().items():
        assert torch.equal(v, original[k])  # the source model itself is never touched
    body = {k: v for k, v in out.model.state_dict().items() if "head" not in k}
    if method in ("probe", "lora", "prompt", "adapter"):
        if method == "lora":
            ft.remove_lora(out.model)
        if method == "adapter":
            ft.remove_adapters(out.model)
        if method == "prompt":
            body = {k[4:]: v for k, v in body.items() if k.startswith("vit.")}
        else:
            body = {k: v for k, v in out.model.state_dict().items() if "head" not in k}
        assert all(torch.equal(v, original[k]) for k, v in body.items())
    if method == "bitfit":  # the weights stay; some biases moved
        assert all(torch.equal(v, original[k]) for k, v in body.items()
                   if not k.endswith(".bias"))
        assert any(not torch.equal(v, original[k]) for k, v in body.items())
    assert out.model(train.x[:2]).shape == (2, 5)


def test_few_shot_splits_per_class_without_overlap():
    data = synthetic(100)
    train, val = ft.few_shot(data, 10, seed=3)
    assert len(train) == 40 and len(val) == 10
    assert torch.bincount(val.y).tolist() == [2] * 5
    rows = lambda d: {tuple(r.flatten()[:5].tolist()) for r in d.x}
    assert not rows(train) & rows(val)
    one, none = ft.few_shot(data, 1, seed=3)
    assert len(one) == 5 and none is None
    everything, val_all = ft.few_shot(data, None, seed=3)
    assert len(everything) + len(val_all) == 100


def test_digits_target_is_framed_like_mnist():
    d = ft.target_task("digits", "test")
    assert d.x.shape[1:] == (1, 28, 28) and len(d.classes) == 10
    assert d.x[:, :, :4].abs().max() == 0 and d.x[:, :, -4:].abs().max() == 0  # the margin
    with pytest.raises(ValueError, match="mnist-5-9"):
        ft.target_task("cifar", "train")


# --- the pre-training cache --------------------------------------------------------------------

def test_mae_loss_is_finite_and_trains_the_encoder():
    encoder = small_vit()
    mae = pretrain.MaskedAutoencoder(encoder, decoder_dim=8)
    loss = mae(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and encoder.patch_embed.weight.grad.abs().sum() > 0
    assert encoder.head.weight.grad is None  # the head plays no part


def test_mae_pretraining_stops_at_a_non_finite_loss():
    from fmlab.monitor import NonFiniteLossError
    sizes = {**TINY, "batch_size": 20, "mae_lr": float("inf")}
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 2\\. Try a smaller"):
        pretrain.train_mae(small_vit(), synthetic(), sizes)


@pytest.mark.parametrize("kind", pretrain.KINDS)
def test_cache_is_reused_and_rebuilt_with_a_notice(tmp_data_dir, capsys, kind):
    first = pretrain.pretrained(kind, sizes=TINY)
    assert first.pretraining["source"] == "trained"
    assert "is not cached yet" in capsys.readouterr().err
    again = pretrain.pretrained(kind, sizes=TINY)
    notice = capsys.readouterr().err
    assert again.pretraining["source"] == "cache" and notice == ""
    for k, v in first.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)

    path = pretrain.cache_path(kind, again.pretraining["settings"])
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(blob))
    rebuilt = pretrain.pretrained(kind, sizes=TINY)
    err = capsys.readouterr().err
    assert rebuilt.pretraining["source"] == "trained"
    assert "corrupt" in err and len(err.strip().splitlines()) == 1
    for k, v in first.state_dict().items():  # the same seed: the same weights again
        assert torch.equal(rebuilt.state_dict()[k], v)

    path.unlink()
    assert pretrain.pretrained(kind, sizes=TINY).pretraining["source"] == "trained"
    assert "is not cached yet" in capsys.readouterr().err


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="supervised"):
        pretrain.pretrained("contrastive")
