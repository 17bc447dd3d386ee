"""fmlab.explain and fmlab.explain_eval: each attribution method against its captum
counterpart on the chapter's model, the quadrature rules, and the scores, curves and sanity
checks of book/06_explanation.ipynb against hand-computed cases."""
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

matplotlib.use("Agg")

from fmlab import data, train  # noqa: E402
from fmlab.explain import (GlobalMaxCNN, activation_maximisation, channel_objective,  # noqa: E402
                           grad_cam, guided_backprop, input_x_gradient, integrated_gradients,
                           logit_objective, occlusion, quadrature, saliency, smoothgrad,
                           target_logit)
from fmlab.explain_eval import (cascading_randomisation, centre_prior, curve_auc,  # noqa: E402
                                importance_map, mask_mass, patch_region, perturbation_curve,
                                pointing_game, random_map, shuffled_labels, sobel_map,
                                spearman, with_corner_patch)

captum_attr = pytest.importorskip("captum.attr")
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    """The chapter's network, briefly trained on shapes (so its maps are not random)."""
    torch.manual_seed(0)
    net = GlobalMaxCNN(3, 4)
    train.fit(net, data.load("shapes", "train", n=400), epochs=2, batch_size=32, lr=3e-3,
              progress=False, device="cpu")
    return net.eval()


@pytest.fixture(scope="module")
def batch():
    d = data.load("shapes", "test", n=6)
    return d.x, d.y


def close(a, b, atol=ATOL):
    return (a - b).abs().max().item() <= atol


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it sets requires_grad itself
        yield


# --- the methods against captum ---------------------------------------------------------------

@pytest.mark.parametrize("absolute", [True, False])
def test_saliency_matches_captum(model, batch, absolute):
    x, y = batch
    ref = captum_attr.Saliency(model).attribute(x, target=y, abs=absolute)
    assert close(saliency(model, x, y, abs=absolute), ref)


def test_input_x_gradient_matches_captum(model, batch):
    x, y = batch
    assert close(input_x_gradient(model, x, y),
                 captum_attr.InputXGradient(model).attribute(x, target=y))


@pytest.mark.parametrize("absolute", [True, False])
def test_smoothgrad_matches_noise_tunnel_with_the_same_noise(model, batch, absolute):
    x, y = batch
    torch.manual_seed(7)
    ours = smoothgrad(model, x, y, samples=5, stdev=0.2, abs=absolute)
    torch.manual_seed(7)
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=5, stdevs=0.2, target=y, abs=absolute)
    assert close(ours, ref)
    again = smoothgrad(model, x, y, 5, 0.2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, smoothgrad(model, x, y, 5, 0.2,
                                         generator=torch.Generator().manual_seed(1)))


def test_guided_backprop_matches_captum(model, batch):
    x, y = batch
    ours = guided_backprop(model, x, y)
    assert close(ours, captum_attr.GuidedBackprop(model).attribute(x, target=y))
    # it differs from the gradient, and its hooks are gone afterwards
    assert not close(ours, saliency(model, x, y, abs=False))
    assert all(not m._backward_hooks for m in model.modules())
    assert torch.equal(saliency(model, x, y), captum_attr.Saliency(model).attribute(x, target=y))


def test_guided_backprop_of_one_relu_keeps_the_positive_gradient():
    """f(x) = w · ReLU(x): the gradient is w ⊙ 1[x > 0]; guided backprop keeps its positive part."""
    w = torch.tensor([2.0, -3.0, 1.0, -1.0])
    net = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(w[None])
    x = torch.tensor([1.0, 1.0, -1.0, 2.0]).view(1, 1, 2, 2)
    assert torch.equal(guided_backprop(net, x, 0).flatten(), torch.tensor([2.0, 0, 0, 0]))
    assert torch.equal(saliency(net, x, 0, abs=False).flatten(), torch.tensor([2.0, -3, 0, -1]))
    with pytest.raises(ValueError, match="nn.ReLU"):
        guided_backprop(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), x, 0)


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle",
                                  "gausslegendre"])
def test_integrated_gradients_matches_captum(model, batch, rule):
    x, y = batch
    baseline = torch.full_like(x, 0.25)
    ours = integrated_gradients(model, x, y, baseline=baseline, steps=24, rule=rule)
    ref, delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=baseline, target=y, n_steps=24, method=rule,
        return_convergence_delta=True)
    assert close(ours.attributions, ref)
    assert close(ours.gap, delta.abs(), atol=1e-4)


def test_captum_trapezoid_weights_sum_to_m_minus_1_over_m(model, batch):
    """captum's riemann_trapezoid puts weight 1/m (halved at the ends) on m points spaced
    1/(m-1) apart; our weights sum to 1, so ours = captum's * m/(m-1)."""
    x, y = batch
    m = 10
    ours = integrated_gradients(model, x, y, steps=m, rule="riemann_trapezoid").attributions
    ref = captum_attr.IntegratedGradients(model).attribute(x, target=y, n_steps=m,
                                                           method="riemann_trapezoid")
    assert close(ours, ref * m / (m - 1))
    assert not close(ours, ref)


@pytest.mark.parametrize("mode", ["nearest", "bilinear", None])
@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_matches_layer_grad_cam(model, batch, mode, relu):
    x, y = batch
    for name in ("features.block3", "features.block2"):
        layer = model.get_submodule(name)
        ref = captum_attr.LayerGradCam(model, layer).attribute(x, target=y,
                                                                relu_attributions=relu)
        if mode is not None:
            ref = captum_attr.LayerAttribution.interpolate(ref, (32, 32), mode)
        assert close(grad_cam(model, x, y, name, upsample=mode, relu=relu), ref)
        assert close(grad_cam(model, x, y, layer, upsample=mode, relu=relu), ref)


def test_grad_cam_names_the_layers_when_one_is_wrong(model, batch):
    with pytest.raises(ValueError, match="features.block3"):
        grad_cam(model, *batch, "features.block9")


@pytest.mark.parametrize("window,stride,baseline", [(4, 2, 0.0), (5, 2, 0.5), (3, 3, 0.0),
                                                     (32, 1, 0.0)])
def test_occlusion_matches_captum(model, batch, window, stride, baseline):
    x, y = batch[0][:2], batch[1][:2]
    ref = captum_attr.Occlusion(model).attribute(
        x, target=y, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
        baselines=baseline, perturbations_per_eval=128)
    assert close(occlusion(model, x, y, window, stride, baseline), ref)


def test_methods_leave_the_model_alone(batch):
    torch.manual_seed(1)
    net = GlobalMaxCNN(3, 4).train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = batch
    for f in (lambda: saliency(net, x, y), lambda: smoothgrad(net, x, y, 2),
              lambda: integrated_gradients(net, x, y, steps=4),
              lambda: guided_backprop(net, x, y),
              lambda: grad_cam(net, x, y, "features.block3"),
              lambda: occlusion(net, x, y, 8, 8)):
        f()
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_bad_input_says_what_is_expected(model, batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        saliency(model, x[0], y)
    with pytest.raises(ValueError, match="class indices"):
        saliency(model, x, y[:2])
    with pytest.raises(ValueError, match="unknown rule"):
        integrated_gradients(model, x, y, rule="simpson")


# --- integrated gradients: quadrature and completeness ---------------------------------------

@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle",
                                  "riemann_trapezoid", "gausslegendre"])
def test_quadrature_weights_sum_to_one_and_points_lie_in_the_interval(rule):
    for m in (2, 3, 16):
        a, w = quadrature(rule, m)
        assert len(a) == len(w) == m and abs(w.sum().item() - 1) < 1e-12
        assert a.min() >= 0 and a.max() <= 1


def test_gauss_legendre_is_exact_up_to_degree_2m_minus_1():
    a, w = quadrature("gausslegendre", 4)
    for degree in range(8):
        assert abs((w * a ** degree).sum().item() - 1 / (degree + 1)) < 1e-12


def test_completeness_is_exact_for_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, base = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    for rule in ("riemann_right", "gausslegendre"):
        ig = integrated_gradients(lin, x, 1, baseline=base, steps=3, rule=rule)
        expected = (x - base) * lin[1].weight[1].view(3, 2, 2)
        assert close(ig.attributions, expected) and ig.gap.max() < 1e-5


def test_the_gap_shrinks_with_more_steps(model, batch):
    x, y = batch[0][:2], batch[1][:2]
    # The right Riemann sum's error falls like 1/m: at 256 steps it measured 1.1% of the rise
    # on this machine and under 1% on another, so the bound is checked at 1024 steps
    gaps = [integrated_gradients(model, x, y, steps=m, rule="riemann_right").gap.mean().item()
            for m in (4, 64, 1024)]
    rise = (target_logit(model, x, y) - target_logit(model, 0 * x, y)).abs().mean().item()
    assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.01 * rise, (gaps, rise)


# --- scores, baselines, curves ------------------------------------------------------------------

def test_pointing_game_takes_the_signed_maximum_and_honours_tolerance():
    maps = torch.zeros(2, 4, 5)
    maps[0, 1, 2], maps[0, 3, 4] = 1.0, -5.0  # the signed maximum is at (1, 2)
    maps[1, 0, 0] = 2.0
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, 1, 2] = True
    masks[1, 2, 2] = True
    assert pointing_game(maps, masks).tolist() == [True, False]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [True, True]
    assert pointing_game(maps.abs(), masks).tolist() == [False, False]


def test_mask_mass_counts_positive_mass_only():
    maps = torch.tensor([[[1.0, -3.0], [2.0, 1.0]], [[-1.0, -2.0], [-1.0, -1.0]]])
    masks = torch.tensor([[[True, True], [False, False]]] * 2)
    assert torch.allclose(mask_mass(maps, masks), torch.tensor([0.25, 0.0]))


def test_random_map_scores_the_area_fraction():
    d = data.load("shapes", "test", n=500)
    area = d.masks.float().mean().item()
    m = random_map(500, (32, 32), torch.Generator().manual_seed(0))
    assert abs(mask_mass(m, d.masks).mean().item() - area) < 0.005
    assert abs(pointing_game(m, d.masks).float().mean().item() - area) < 0.05


def test_centre_prior_and_sobel():
    c = centre_prior(2, (8, 8))
    assert c.shape == (2, 8, 8) and c[0].argmax() in (27, 28, 35, 36)  # the middle 2x2
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    edges = sobel_map(step)[0]
    assert edges[:, [3, 4]].min() > 0 and edges[:, :3].max() == 0 and edges[:, 5:].max() == 0
    assert torch.allclose(edges[:, 3], torch.full((8,), 12.0))  # (1+2+1) per channel x 3


def test_importance_map_sums_absolute_values_over_channels():
    a = torch.tensor([[[[1.0]], [[-2.0]], [[0.5]]]])
    assert importance_map(a).item() == 3.5


def test_deletion_and_insertion_curves(model, batch):
    x, y = batch
    maps = importance_map(saliency(model, x, y))
    probs = lambda z: F.softmax(model(z), 1).gather(1, y[:, None]).squeeze(1)
    with torch.no_grad():
        dele = perturbation_curve(model, x, y, maps, "deletion", steps=8)
        ins = perturbation_curve(model, x, y, maps, "insertion", steps=8)
        assert dele.shape == (6, 9)
        assert close(dele[:, 0], probs(x)) and close(dele[:, -1], probs(torch.zeros_like(x)))
        assert close(ins[:, -1], probs(x))
        # after 1/8 of the pixels: exactly the top-ranked 128 pixels are black
        top = maps.flatten(1).argsort(1, descending=True)[:, :128]
        keep = torch.ones(6, 1024).scatter_(1, top, 0.0).view(6, 1, 32, 32)
        assert close(dele[:, 1], probs(x * keep))
    assert torch.allclose(curve_auc(torch.full((3, 5), 0.4)), torch.full((3,), 0.4))
    assert torch.allclose(curve_auc(torch.linspace(0, 1, 9)[None]), torch.tensor([0.5]))


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    b = a + torch.rand(3, 40, generator=g) * 3
    ours = spearman(a, b)
    for i in range(3):
        assert abs(ours[i].item() - spearmanr(a[i], b[i]).statistic) < 1e-6


def test_cascading_randomisation_goes_top_down_and_copies(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    for name, net in cascading_randomisation(model, ["fc", "features.block3"]):
        seen.append(name)
        changed = {k for k, v in net.state_dict().items()
                   if not torch.equal(v, before[k]) and v.is_floating_point()}
        assert "fc.weight" in changed
        assert ("features.block3.0.weight" in changed) == (name == "features.block3")
        assert not any(k.startswith(("features.block1", "features.block2")) for k in changed)
    assert seen == ["fc", "features.block3"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_shortcut_and_shuffled_data():
    d = data.load("shapes", "train", n=50)
    planted = with_corner_patch(d, informative=True)
    colours = planted.x[:, :, 0, 0]  # (N, 3)
    from fmlab.explain_eval import PATCH_COLOURS
    assert torch.equal(colours, PATCH_COLOURS[d.y])
    assert torch.equal(planted.x[:, :, 3:, 3:], d.x[:, :, 3:, 3:])
    assert not (planted.masks & patch_region((32, 32))).any()
    rand = with_corner_patch(d, informative=False, seed=3)
    assert not torch.equal(rand.x[:, :, 0, 0], colours)
    shuffled = shuffled_labels(d, seed=1)
    assert torch.equal(shuffled.y.sort().values, d.y.sort().values)
    assert not torch.equal(shuffled.y, d.y) and torch.equal(shuffled.x, d.x)


# --- feature visualisation and plots ------------------------------------------------------------

def test_activation_maximisation_raises_its_objective(model):
    classes = torch.arange(4)
    with torch.no_grad():
        start = target_logit(model, torch.full((4, 3, 32, 32), 0.5), classes)
    img = activation_maximisation(model, logit_objective(classes), 4, steps=30)
    assert img.shape == (4, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    with torch.no_grad():
        assert (target_logit(model, img, classes) > start).all()
    chan = activation_maximisation(model, channel_objective("features.block3", [0, 1]), 2,
                                   steps=5, jitter=0, blur_sigma=0, l2=0)
    assert chan.shape == (2, 3, 32, 32)


def test_overlays_draw():
    import matplotlib.pyplot as plt

    from fmlab import plot

    d = data.load("shapes", "test", n=2)
    fig = plot.attribution_grid(d.x, {"edges": sobel_map(d.x), "flat": torch.zeros(2, 32, 32)},
                                d.masks, row_titles=["a", "b"])
    assert len(fig.axes) == 6
    plt.close("all")
