import math

import pytest
import torch

from fmlab import models


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_models_accept_any_size_and_channels(name, channels, size):
    model = models.build(name, in_channels=channels, num_classes=7, image_size=size)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 7)


def test_seed_cnn_matches_the_seeds_layers():
    model = models.SeedCNN(3, 10, 32)
    conv = model.features[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (3, 32, (3, 3), (0, 0))
    dense = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    # 32x32 -> conv 3x3 valid -> 30x30 -> pool 2 -> 15x15, times 32 channels
    assert dense[0].in_features == 32 * 15 * 15 and dense[0].out_features == 64
    assert dense[1].out_features == 10


def test_lenet300100_sizes():
    model = models.LeNet300100()
    assert models.count_parameters(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_too_small_input_and_unknown_name():
    with pytest.raises(ValueError, match="too small"):
        models.LeNet5(1, 10, 8)
    with pytest.raises(ValueError, match="seedcnn"):
        models.build("vgg")


def _count(*shapes_and_biases):
    return sum(math.prod(s) for s in shapes_and_biases)


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_cnns_have_their_documented_layers(channels, size):
    """Parameter counts worked out by hand from each docstring's architecture."""
    side = (size - 2) // 2  # SeedCNN: conv 3x3 valid, pool 2
    assert models.count_parameters(models.SeedCNN(channels, 10, size)) == _count(
        (32, channels, 3, 3), (32,), (32 * side * side, 64), (64,), (64, 10), (10,))
    q = size // 4  # TwoConvNet: 'same' convolutions, two pools
    assert models.count_parameters(models.TwoConvNet(channels, 10, size)) == _count(
        (32, channels, 3, 3), (32,), (64, 32, 3, 3), (64,), (64 * q * q, 128), (128,), (128, 10), (10,))
    s5 = ((size // 2) - 4) // 2  # LeNet-5: conv 5x5 pad 2, pool, conv 5x5 valid, pool
    assert models.count_parameters(models.LeNet5(channels, 10, size)) == _count(
        (6, channels, 5, 5), (6,), (16, 6, 5, 5), (16,), (16 * s5 * s5, 120), (120,),
        (120, 84), (84,), (84, 10), (10,))
    assert models.count_parameters(models.LeNet300100(channels, 7, size)) == _count(
        (channels * size * size, 300), (300,), (300, 100), (100,), (100, 7), (7,))


def test_small_resnet_stages_halve_and_double():
    model = models.SmallResNet(1, 10, 28)
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 7, 7)
    bn = lambda c: 2 * c  # noqa: E731  (weight and bias)
    assert models.count_parameters(model) == (
        16 * 9 + bn(16)
        + 2 * 16 * 16 * 9 + 2 * bn(16)
        + 16 * 32 * 9 + 32 * 32 * 9 + 2 * bn(32) + 16 * 32 + bn(32)
        + 32 * 64 * 9 + 64 * 64 * 9 + 2 * bn(64) + 32 * 64 + bn(64)
        + 64 * 10 + 10)
    two = models.SmallResNet(3, 5, 32, widths=(8, 16), blocks_per_stage=2)
    blocks = [m for m in two.features if isinstance(m, models.BasicBlock)]
    assert [b.body[0].stride for b in blocks] == [(1, 1), (1, 1), (2, 2), (1, 1)]
    assert two(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_basic_block_adds_its_shortcut_then_relu():
    torch.manual_seed(0)
    same, down = models.BasicBlock(4, 4), models.BasicBlock(4, 8, stride=2)
    assert isinstance(same.shortcut, torch.nn.Identity)
    conv = down.shortcut[0]
    assert (conv.kernel_size, conv.stride, conv.out_channels, conv.bias) == ((1, 1), (2, 2), 8, None)
    for block in (same, down):
        body = block.body
        s = 2 if block is down else 1
        assert [m.stride for m in body if isinstance(m, torch.nn.Conv2d)] == [(s, s), (1, 1)]
        assert all(m.bias is None and m.padding == (1, 1) for m in body if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 4, 6, 6)
    same.eval()
    torch.nn.init.zeros_(same.body[4].weight)  # the body's last batch norm: its output is 0
    assert torch.equal(same(x), torch.relu(x))
    down.eval()
    out = down(x)
    assert out.shape == (2, 8, 3, 3) and out.min() >= 0
    assert torch.allclose(out, torch.relu(down.body(x) + down.shortcut(x)))


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_attention_matches_torch(mask):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    m = None
    if mask == "bool":
        m = torch.rand(5, 5, generator=g) > 0.3
        m.fill_diagonal_(True)  # every query sees at least one key
    elif mask == "float":
        m = torch.randn(5, 5, generator=g)
    out, weights = models.attention(q, k, v, m, return_weights=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(weights.sum(-1), torch.ones(2, 3, 5))
    assert torch.equal(models.attention(q, k, v, m), out)
    if mask == "bool":
        assert (weights[..., ~m] == 0).all()


def test_multi_head_attention_fused_equals_written_out():
    torch.manual_seed(0)
    mha = models.MultiHeadAttention(16, 4)
    x = torch.randn(2, 6, 16)
    fused = mha(x)
    mha.fused = False
    assert torch.allclose(mha(x), fused, atol=1e-5) and mha.weights.shape == (2, 4, 6, 6)
    # one head by hand: project, split, attend, merge, project
    q, k, v = mha.qkv(x).split(16, dim=-1)
    heads = lambda t: t.reshape(2, 6, 4, 4).transpose(1, 2)  # noqa: E731
    att = torch.softmax(heads(q) @ heads(k).transpose(-2, -1) / 2.0, -1) @ heads(v)
    assert torch.allclose(mha.proj(att.transpose(1, 2).reshape(2, 6, 16)), fused, atol=1e-5)
    with pytest.raises(ValueError, match="dim=10 must be divisible by heads=4"):
        models.MultiHeadAttention(10, 4)


def test_vit_sizes_and_attention_maps():
    torch.manual_seed(0)
    vit = models.ViT(1, 10, 28)  # patch 7: a 4x4 grid, 17 tokens
    assert vit.patch_size == 7 and vit.num_patches == 16 and len(vit.blocks) == 3
    assert vit.config == dict(in_channels=1, num_classes=10, image_size=28, patch_size=7, dim=32,
                              depth=3, heads=4, mlp_ratio=2.0)
    assert vit.pos_embed.shape == (1, 17, 32) and vit.cls_token.shape == (1, 1, 32)
    assert 0.01 < vit.pos_embed.std() < 0.03 and 0.005 < vit.cls_token.std() < 0.04  # N(0, 0.02)
    d, h = 32, 64
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    assert models.count_parameters(vit) == (49 * d + d) + d + 17 * d + 3 * block + 2 * d + (d * 10 + 10)
    x = torch.rand(2, 1, 28, 28)
    tokens = vit.embed(x)
    assert tokens.shape == (2, 17, 32)
    patches = vit.patch_embed(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens[:, 1:], patches + vit.pos_embed[:, 1:])
    assert torch.allclose(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[:, 0].expand(2, -1))
    encoded = tokens
    for b in vit.blocks:
        encoded = b(encoded)
    assert torch.allclose(vit.encode(tokens), vit.norm(encoded))
    assert torch.allclose(vit.features(x), vit.norm(encoded)[:, 0])
    assert torch.allclose(vit(x), vit.head(vit.norm(encoded)[:, 0]))
    maps = vit.attention_maps(x)
    assert maps.shape == (3, 2, 4, 17, 17) and torch.allclose(maps.sum(-1), torch.ones(3, 2, 4, 17))
    assert all(b.attn.fused and b.attn.weights is None for b in vit.blocks)
    assert models.ViT(3, 5, 32, patch_size=8, dim=16, depth=1, heads=2).num_patches == 16
    with pytest.raises(ValueError, match="patch_size=5 does not divide image_size=28"):
        models.ViT(1, 10, 28, patch_size=5)


def test_transformer_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = models.Block(8, 2, mlp_ratio=3.0)
    assert block.mlp[0].out_features == 24 and isinstance(block.mlp[1], torch.nn.GELU)
    x = torch.randn(2, 5, 8)
    mid = x + block.attn(block.norm1(x))
    assert torch.allclose(block(x), mid + block.mlp(block.norm2(mid)), atol=1e-6)


def test_build_by_name_and_small_inputs():
    assert isinstance(models.build("SeedCNN", image_size=8), models.SeedCNN)
    with pytest.raises(ValueError, match="unknown model 'vgg'; choose one of: seedcnn, twoconv, "
                                         "lenet5, lenet300100, resnet, vit"):
        models.build("vgg")
    with pytest.raises(ValueError, match="an input of size 2 is too small for a kernel of 3"):
        models.SeedCNN(1, 10, 2)
    assert models.SeedCNN(1, 10, 4)(torch.zeros(1, 1, 4, 4)).shape == (1, 10)  # 4 -> 2 -> 1
