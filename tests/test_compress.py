"""fmlab.compress and fmlab.quantize against their oracles: torch.nn.utils.prune's masks,
torch.quantize_per_tensor / per_channel and the min/max observers, torch.fake_quantize_*,
F.kl_div, autograd, torch-pruning and torch.utils.flop_counter."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tprune
from torch import nn

from fmlab import compress as C
from fmlab import models

# PyTorch's own quantized tensors are deprecated, and still the oracle at 8 bits
pytestmark = pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*deprecated")


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return cls()


def _torch_global(model, amount):
    params = [(m, "weight") for m in C.prunable(model).values()]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    return {name: m.weight_mask.clone() for name, m in C.prunable(model).items()}


# ---------------------------------------------------------------------------------------------
# Unstructured pruning
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [models.LeNet300100, models.TwoConvNet, models.LeNet5])
@pytest.mark.parametrize("amount", [0.3, 0.9, 0.987, 1000])
def test_global_masks_equal_torch_prune(cls, amount):
    ours = C.magnitude_masks(_model(cls), amount, scope="global")
    theirs = _torch_global(_model(cls), amount)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("amount", [0.2, 0.75, 100])
def test_layer_masks_equal_l1_unstructured(amount):
    ours = C.magnitude_masks(_model(models.LeNet5), amount, scope="layer")
    ref = _model(models.LeNet5)
    for name, m in C.prunable(ref).items():
        tprune.l1_unstructured(m, "weight", amount)
        assert torch.equal(ours[name], m.weight_mask), name


def test_iterative_global_pruning_equals_torch_container():
    """Pruning 50% then 80% (of all weights) equals torch pruning 50%, then the count that is
    left to reach 80% among the survivors (torch's amounts are relative to what remains)."""
    ours, ref = _model(models.LeNet300100), _model(models.LeNet300100)
    n = sum(m.weight.numel() for m in C.prunable(ours).values())
    C.magnitude_prune(ours, 0.5)
    masks = C.magnitude_prune(ours, 0.8)
    _torch_global(ref, 0.5)
    theirs = _torch_global(ref, round(0.8 * n) - round(0.5 * n))
    for name in masks:
        assert torch.equal(masks[name], theirs[name]), name
    assert C.sparsity(ours) == pytest.approx(round(0.8 * n) / n)


def test_sparsity_counts_real_zeros_and_pruning_becomes_permanent():
    model = _model(models.LeNet300100)
    assert C.sparsity(model) == 0.0
    C.magnitude_prune(model, 0.9)
    underlying = model.net[1].parametrizations.weight.original
    assert (underlying == 0).float().mean() < 0.01  # the zeros are in the mask, not the tensor
    assert C.sparsity(model) == pytest.approx(0.9, abs=1e-5)
    per_layer = C.sparsity(model, per_layer=True)
    assert set(per_layer) == {"net.1", "net.3", "net.5"}
    C.make_permanent(model)
    state = model.state_dict()
    assert set(state) == {f"net.{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")}
    zeros = sum(int((state[f"net.{i}.weight"] == 0).sum()) for i in (1, 3, 5))
    total = sum(state[f"net.{i}.weight"].numel() for i in (1, 3, 5))
    assert zeros / total == pytest.approx(0.9, abs=1e-5)
    with torch.no_grad():  # zeros written by hand count as well
        model.net[5].weight.zero_()
    assert C.sparsity(model, per_layer=True)["net.5"] == 1.0


def test_masked_weights_stay_zero_while_training():
    from fmlab import data, train
    model = _model(models.LeNet300100)
    masks = C.magnitude_prune(model, 0.8)
    assert all(torch.equal(masks[k], v) for k, v in C.masks_of(model).items())
    assert set(C.masks_of(model)) == set(masks)
    train.fit(model, data.load("mnist", "train").subset(256), epochs=1, batch_size=64,
              lr=1e-2, progress=False, device="cpu")
    for name, m in C.prunable(model).items():
        assert torch.all(m.weight[masks[name] == 0] == 0), name
    assert C.sparsity(model) == pytest.approx(0.8, abs=1e-5)


def test_pruning_errors_say_what_to_do():
    model = _model(models.LeNet5)
    with pytest.raises(ValueError, match="fraction"):
        C.magnitude_masks(model, 1.5)
    with pytest.raises(ValueError, match="scope"):
        C.magnitude_masks(model, 0.5, scope="channel")
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        C.magnitude_masks(nn.Sequential(nn.ReLU()), 0.5)
    C.magnitude_prune(model, 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        C.saved_bytes(model)


# ---------------------------------------------------------------------------------------------
# Structured pruning
# ---------------------------------------------------------------------------------------------

def _torch_pruning(model, amount, example):
    tp = pytest.importorskip("torch_pruning")
    imp = tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    pruner = tp.pruner.MagnitudePruner(model, example, importance=imp, pruning_ratio=amount,
                                       root_module_types=[nn.Conv2d])
    pruner.step()
    return model


@pytest.mark.parametrize("cls", [models.TwoConvNet, models.LeNet5, models.SeedCNN])
@pytest.mark.parametrize("amount", [0.5, 0.75])
def test_prune_filters_equals_torch_pruning_and_really_shrinks(cls, amount):
    example = torch.rand(2, 1, 28, 28)
    dense = _model(cls).eval()
    ours = C.prune_filters(dense, amount, example)
    theirs = _torch_pruning(copy.deepcopy(dense), amount, example).eval()
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.rand(8, 1, 28, 28)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert models.count_parameters(ours) < models.count_parameters(dense)
    assert C.count_macs(ours, example) < C.count_macs(dense, example)
    convs = [m for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.out_channels < m0.out_channels for m, m0 in
               zip(convs, [m for m in dense.modules() if isinstance(m, nn.Conv2d)]))


def test_prune_filters_slices_batch_norm_like_torch_pruning():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, bias=False), nn.BatchNorm2d(12),
                          nn.ReLU(), nn.Flatten(), nn.Dropout(0.1), nn.Linear(12 * 12 * 12, 10))
    for bn in (chain[1], chain[5]):  # non-trivial running statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    chain.eval()
    example = torch.rand(2, 1, 28, 28)
    ours = C.prune_filters(chain, 0.5, example)
    theirs = _torch_pruning(copy.deepcopy(chain), 0.5, example).eval()
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert a.shape == b.shape and torch.equal(a, b), k
    assert torch.allclose(ours(example), theirs(example), atol=1e-6)
    assert ours[5].num_features == 6 and ours[9].in_features == 6 * 12 * 12


def test_prune_filters_keeps_each_submodules_mode():
    """A model in train mode with a frozen batch norm: the pruned copy (its batch norm replaced
    by a smaller one) has the same modes, and the model given is left as it was."""
    chain = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 28 * 28, 10)).train()
    chain[1].eval()
    before = [m.training for m in chain.modules()]
    pruned = C.prune_filters(chain, 0.5, torch.rand(2, 1, 28, 28))
    assert [m.training for m in pruned.modules()] == before
    assert [m.training for m in chain.modules()] == before
    assert pruned[1].num_features == 4


def test_prune_filters_keeps_the_largest_filters_and_refuses_branches():
    model = _model(models.TwoConvNet).eval()
    norms = model.features[0].weight.abs().sum((1, 2, 3))
    pruned = C.prune_filters(model, 0.5, torch.rand(1, 1, 28, 28))
    kept = pruned.features[0].weight.abs().sum((1, 2, 3))
    assert torch.equal(torch.sort(kept).values, torch.sort(norms).values[16:])
    with pytest.raises(ValueError, match="torch-pruning"):
        C.prune_filters(models.SmallResNet().eval(), 0.5, torch.rand(1, 1, 28, 28))


def test_count_macs_equals_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    for cls in (models.TwoConvNet, models.LeNet5, models.LeNet300100):
        model, x = _model(cls).eval(), torch.rand(3, 1, 28, 28)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        assert C.count_macs(model, x) * 3 * 2 == counter.get_total_flops(), cls.__name__


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

def test_packed_state_round_trips_and_saves_bytes():
    model = _model(models.LeNet300100)
    C.magnitude_prune(model, 0.9)
    C.make_permanent(model)
    dense = C.saved_bytes(model)
    sparse = C.packed_state(model)
    restored = C.unpack_state(sparse)
    for k, v in model.state_dict().items():
        assert torch.equal(restored[k], v), k
    # 10% of the values at 4 bytes and one bit per weight: about a 7x saving, minus overhead
    assert dense / C.saved_bytes(sparse) > 6
    both = C.packed_state(model, sparse=True, bits=8)
    restored = C.unpack_state(both)
    for name, m in C.prunable(model).items():
        w = m.weight
        scale = both[f"{name}.weight"]["scale"]
        assert torch.equal(restored[f"{name}.weight"] == 0, w == 0)
        assert ((restored[f"{name}.weight"] - w).abs() <= scale[:, None] / 2 + 1e-7).all()
    assert dense / C.saved_bytes(both) > 15
    assert abs(C.saved_bytes(model) - 4 * models.count_parameters(model)) < 4000  # fp32 + pickle


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

def _observer(scheme, axis):
    from torch.ao import quantization as tq
    dtype = torch.qint8 if scheme == "symmetric" else torch.quint8
    if axis is None:
        qs = torch.per_tensor_symmetric if scheme == "symmetric" else torch.per_tensor_affine
        return tq.MinMaxObserver(dtype=dtype, qscheme=qs), dtype
    qs = torch.per_channel_symmetric if scheme == "symmetric" else torch.per_channel_affine
    return tq.PerChannelMinMaxObserver(ch_axis=axis, dtype=dtype, qscheme=qs), dtype


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("shift", [0.0, 1.3])
def test_quantize_at_8_bits_equals_torch(scheme, axis, shift):
    torch.manual_seed(1)
    x = torch.randn(64, 400) * torch.rand(64, 1) * 3 + shift
    x[3] = 0.0  # a channel of zeros: the observers' smallest scale
    q, scale, zp = C.quantize(x, 8, scheme, axis)
    obs, dtype = _observer(scheme, axis)
    obs(x)
    ref_scale, ref_zp = obs.calculate_qparams()
    if axis is None:
        assert scale.item() == ref_scale.item() and zp.item() == ref_zp.item()
        ref = torch.quantize_per_tensor(x, scale.item(), int(zp), dtype)
    else:
        assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp.long())
        ref = torch.quantize_per_channel(x, scale.double(), zp, axis, dtype)
    assert q.dtype == (torch.int8 if scheme == "symmetric" else torch.uint8)
    assert torch.equal(q, ref.int_repr())
    assert torch.equal(C.dequantize(q, scale, zp, axis), ref.dequantize())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("axis", [None, 0])
def test_error_is_at_most_half_a_step_inside_the_range(bits, scheme, axis):
    torch.manual_seed(bits)
    x = torch.randn(8, 500) * torch.rand(8, 1) + torch.randn(8, 1)
    q, scale, zp = C.quantize(x, bits, scheme, axis)
    x_hat = C.dequantize(q, scale, zp, axis)
    qmin, qmax = C.qrange(bits, scheme)
    s = scale[:, None] if axis == 0 else scale
    z = zp[:, None] if axis == 0 else zp
    lo, hi = s * (qmin - z), s * (qmax - z)
    inside = (x >= lo) & (x <= hi)
    if bits == 8:  # min/max scales put (almost) everything inside; low bits clip the top
        assert inside.float().mean() > 0.99
    err = (x - x_hat).abs()
    assert (err[inside] <= (s / 2).expand_as(x)[inside] * (1 + 1e-5)).all()
    assert q.min() >= qmin and q.max() <= qmax
    assert torch.equal(x_hat == 0, q.long() == z.expand_as(q.long()) if axis == 0 else q.long() == z)


def test_quantize_errors():
    with pytest.raises(ValueError, match="bits"):
        C.quantize(torch.randn(4), bits=1)
    with pytest.raises(ValueError, match="scheme"):
        C.quantize(torch.randn(4), scheme="asymmetric")
    with pytest.raises(ValueError, match="nan"):
        C.quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="axis"):
        C.quantize(torch.randn(3, 4), axis=2)


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_fake_quantize_equals_torch_forward_and_passes_gradient_straight_through(scheme):
    torch.manual_seed(0)
    w = (torch.randn(6, 30) * 2).requires_grad_(True)
    g = torch.randn(6, 30)
    ours = C.fake_quantize(w, 8, scheme, axis=0)
    (ours * g).sum().backward()
    assert torch.equal(w.grad, g)  # the straight-through estimator: identity
    _, scale, zp = C.quantize(w, 8, scheme, axis=0)
    qmin, qmax = C.qrange(8, scheme)
    w2 = w.detach().clone().requires_grad_(True)
    ref = torch.fake_quantize_per_channel_affine(w2, scale, zp.int(), 0, qmin, qmax)
    (ref * g).sum().backward()
    assert torch.allclose(ours, ref, atol=1e-6)
    inside = w2.grad != 0  # torch zeroes the gradient only where a value is clipped
    assert inside.float().mean() > 0.95 and torch.equal(w.grad[inside], w2.grad[inside])


def test_fake_quant_layers_compute_with_quantized_weights():
    model = _model(models.LeNet5).eval()
    x = torch.rand(4, 1, 28, 28)
    ptq = C.weights_quantized(model, 4)
    qat = C.add_fake_quant(copy.deepcopy(model), 4)
    assert torch.allclose(ptq(x), qat(x), atol=1e-5)
    C.make_permanent(qat)
    for m in C.prunable(qat).values():  # at most 16 distinct values per output channel
        assert max(len(torch.unique(row)) for row in m.weight.flatten(1)) <= 16


def test_torchao_int8_is_four_times_smaller_and_close():
    model = _model(models.LeNet300100).eval()
    x = torch.rand(16, 1, 28, 28)
    for mode in ("weight_only", "dynamic"):
        q = C.torchao_int8(model, mode)
        ratio = C.saved_bytes(model) / C.saved_bytes(q)
        assert 3.0 < ratio < 4.1, (mode, ratio)
        assert (q(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    with pytest.raises(ValueError, match="mode"):
        C.torchao_int8(model, "int4")


# ---------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 1.0), (2.0, 0.0)])
def test_distillation_loss_equals_kl_div_and_its_gradient_the_closed_form(T, alpha):
    torch.manual_seed(0)
    s = (torch.randn(12, 10, dtype=torch.float64) * 3).requires_grad_(True)
    t = torch.randn(12, 10, dtype=torch.float64) * 5
    y = torch.randint(0, 10, (12,))
    loss = C.distillation_loss(s, t, y, T, alpha)
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    ref = alpha * T ** 2 * kl + (1 - alpha) * F.cross_entropy(s, y)
    assert torch.allclose(loss, ref, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.allclose(grad, C.distillation_grad(s, t, y, T, alpha), atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: C.distillation_loss(z, t, y, T, alpha), (s,))


def test_t_squared_keeps_the_soft_gradient_the_same_size():
    """Hinton et al.: the soft term's gradient scales as 1/T²; the T² factor undoes that."""
    torch.manual_seed(0)
    s, t = torch.randn(64, 10, dtype=torch.float64), torch.randn(64, 10, dtype=torch.float64)
    y = torch.zeros(64, dtype=torch.long)
    norms = [C.distillation_grad(s, t, y, T, 1.0).norm().item() for T in (8.0, 16.0, 32.0)]
    assert max(norms) / min(norms) < 1.05
    raw = [n / T ** 2 for n, T in zip(norms, (8.0, 16.0, 32.0))]
    assert raw[0] / raw[2] > 15


def test_train_distilled_without_teacher_is_cross_entropy_training():
    from fmlab import data
    tr = data.load("mnist", "train").subset(128)
    a, b = _model(models.LeNet300100), _model(models.LeNet300100)
    C.train_distilled(a, tr, None, epochs=1, batch_size=32, device="cpu")
    # alpha = 0 with any teacher logits: the same loss, so the same weights
    C.train_distilled(b, tr, torch.randn(128, 10), epochs=1, alpha=0.0, batch_size=32, device="cpu")
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k
    with pytest.raises(ValueError, match="teacher logits"):
        C.train_distilled(a, tr, torch.randn(5, 10), epochs=1, device="cpu")


def test_train_distilled_stops_at_a_non_finite_loss():
    from fmlab import data
    from fmlab.monitor import NonFiniteLossError
    tr = data.load("mnist", "train").subset(96)
    teacher = torch.randn(96, 10)
    teacher[40] = float("nan")  # poisons the batch that holds image 40
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step [1-3]\\. Try a smaller"):
        C.train_distilled(_model(models.LeNet300100), tr, teacher, epochs=1, batch_size=32,
                          device="cpu")
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 2\\."):
        C.train_distilled(_model(models.LeNet300100), tr, None, epochs=1, lr=float("inf"),
                          batch_size=32, device="cpu")


def test_median_latency_returns_a_time_per_model():
    a, b = _model(models.LeNet300100).eval(), _model(models.LeNet5).eval()
    t = C.median_latency({"a": a, "b": b}, torch.rand(1, 1, 28, 28), repeats=3, min_time=0.001)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert torch.get_num_threads() >= 1


# --- integer-only inference, N:M sparsity, weight sharing -------------------------------------

def test_fixed_point_multiplier_reproduces_the_multiplier():
    for m in (0.9999, 0.5, 0.3, 1e-3, 2.5e-5):
        m0, shift = C.fixed_point_multiplier(m)
        assert 2**30 <= m0 < 2**31
        assert abs(m0 * 2.0**-shift - m) <= m * 2.0**-30
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        C.fixed_point_multiplier(1.5)


@pytest.mark.parametrize("relu", [False, True])
def test_integer_linear_gives_pytorchs_quantized_linear_codes(relu):
    """The oracle: fbgemm's int8 linear (torch.ops.quantized), deprecated in favour of torchao
    but still there. Its requantization rounds in floating point, ours with a fixed-point
    multiplier: a code may differ by one."""
    import warnings

    from fmlab.quantize import IntLinear

    torch.manual_seed(0)
    x, w, b = torch.rand(32, 96), torch.randn(40, 96) * 0.1, torch.randn(40) * 0.1
    x_scale, x_zero, y_scale, y_zero = 1 / 255, 3, 0.02, 7 if relu else 120
    q_w, w_scale, _ = C.quantize(w, 8, "symmetric")
    q_x = C.quantize_with(x, x_scale, x_zero)
    m0, shift = C.fixed_point_multiplier(x_scale * w_scale.item() / y_scale)
    q_b = torch.round(b / (x_scale * w_scale)).to(torch.int32)
    ours = C.integer_linear(q_x, x_zero, IntLinear(q_w, q_b, m0, shift, y_scale, y_zero, relu))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tx = torch.quantize_per_tensor(x, x_scale, x_zero, torch.quint8)
        tw = torch.quantize_per_tensor(w, w_scale.item(), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(tw, b)
        op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
        ref = op(tx, packed, y_scale, y_zero).int_repr()
    assert torch.equal(q_x, tx.int_repr())
    diff = (ours.int() - ref.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.98, diff.float().mean()
    assert ours.dtype == torch.uint8 and (not relu or ours.min() >= y_zero)


def test_integer_mlp_matches_the_float_model_within_its_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(256, 1, 8, 8)
    integer = C.IntegerMLP(model, x)
    with torch.no_grad():
        ref = model(x)
    step = integer.layers[-1].out_scale
    assert (integer(x) - ref).abs().max() < 6 * step  # rounding of inputs, weights, each layer
    assert (integer(x).argmax(1) == ref.argmax(1)).float().mean() > 0.95
    with pytest.raises(ValueError, match="chains of Linear and ReLU"):
        C.IntegerMLP(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), torch.rand(8, 4))


def test_n_m_masks_keep_the_largest_n_of_every_m():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 6), nn.ReLU(), nn.Conv2d(1, 3, 2))
    masks = C.n_m_masks(model, 2, 4)
    for name, layer in C.prunable(model).items():
        rows = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        mask = masks[name].reshape(rows.shape)
        for r in range(rows.shape[0]):
            for g in range(0, rows.shape[1], 4):
                group = rows[r, g:g + 4].abs()
                keep = set(group.topk(2).indices.tolist())
                assert {i for i in range(4) if mask[r, g + i]} == keep
    with pytest.raises(ValueError, match="groups of 4"):
        C.n_m_masks(nn.Sequential(nn.Linear(6, 2)))


def test_share_weights_gives_sklearns_kmeans_centroids():
    from sklearn.cluster import KMeans

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40))
    shared = C.share_weights(model, clusters=8, iterations=100)
    w = model[0].weight.detach().flatten().double().numpy()[:, None]
    init = torch.linspace(float(w.min()), float(w.max()), 8).double().numpy()[:, None]
    km = KMeans(8, init=init, n_init=1, max_iter=100, tol=0).fit(w)
    ours = shared[0].weight.detach().flatten().unique()
    assert ours.numel() == 8
    assert torch.allclose(ours.double().sort().values,
                          torch.from_numpy(km.cluster_centers_.ravel()).sort().values, atol=1e-5)
