"""Plausible wrong answers to the explanation lab; each must keep at most half of its question's points."""

WRONG = {
    "q1": {
        "no_difference_factor": '''
def integrated_gradients(model, x, target, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        point = (baseline + k / steps * (x - baseline)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point).gather(1, target[:, None]).sum(), point)
        total += grad
    attributions = total / steps  # the mean gradient, without (x - x')
    with torch.no_grad():
        rise = (model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])).squeeze(1)
    return attributions, (attributions.flatten(1).sum(1) - rise).abs()
''',
        "baseline_and_input_swapped": '''
def integrated_gradients(model, x, target, baseline, steps):
    x, baseline = baseline, x  # walks from x to the baseline
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        point = (baseline + k / steps * (x - baseline)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point).gather(1, target[:, None]).sum(), point)
        total += grad
    attributions = (x - baseline) * total / steps
    with torch.no_grad():
        rise = (model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])).squeeze(1)
    return attributions, (attributions.flatten(1).sum(1) - rise).abs()
''',
        "loss_gradient": '''
def integrated_gradients(model, x, target, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        point = (baseline + k / steps * (x - baseline)).detach().requires_grad_(True)
        loss = F.cross_entropy(model(point), target, reduction="sum")  # the loss, not the logit
        (grad,) = torch.autograd.grad(loss, point)
        total += grad
    attributions = (x - baseline) * total / steps
    with torch.no_grad():
        rise = (model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])).squeeze(1)
    return attributions, (attributions.flatten(1).sum(1) - rise).abs()
''',
        "left_riemann_sum": '''
def integrated_gradients(model, x, target, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(steps):  # alpha = 0, 1/m, ..., (m-1)/m
        point = (baseline + k / steps * (x - baseline)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point).gather(1, target[:, None]).sum(), point)
        total += grad
    attributions = (x - baseline) * total / steps
    with torch.no_grad():
        rise = (model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])).squeeze(1)
    return attributions, (attributions.flatten(1).sum(1) - rise).abs()
''',
        "signed_gap": '''
def integrated_gradients(model, x, target, baseline, steps):
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        point = (baseline + k / steps * (x - baseline)).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(point).gather(1, target[:, None]).sum(), point)
        total += grad
    attributions = (x - baseline) * total / steps
    with torch.no_grad():
        rise = (model(x).gather(1, target[:, None]) - model(baseline).gather(1, target[:, None])).squeeze(1)
    return attributions, attributions.flatten(1).sum(1) - rise  # not its absolute value
''',
    },
    "q2": {
        "hook_never_removed": '''
def grad_cam(model, x, target, layer):
    store = {}
    model.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: store.update(A=output))  # stays on the layer
    score = model(x).gather(1, target[:, None]).sum()
    acts = store["A"]
    (grad,) = torch.autograd.grad(score, acts)
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * acts).sum(1)).detach()
''',
        "no_relu": '''
def grad_cam(model, x, target, layer):
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(A=o))
    score = model(x).gather(1, target[:, None]).sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, store["A"])
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return (alpha * store["A"]).sum(1).detach()  # negative evidence kept
''',
        "weights_not_averaged": '''
def grad_cam(model, x, target, layer):
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(A=o))
    score = model(x).gather(1, target[:, None]).sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, store["A"])
    return F.relu((grad * store["A"]).sum(1)).detach()  # gradient x activation per position
''',
        "loss_gradient": '''
def grad_cam(model, x, target, layer):
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(A=o))
    loss = F.cross_entropy(model(x), target, reduction="sum")  # the loss, not the logit
    handle.remove()
    (grad,) = torch.autograd.grad(loss, store["A"])
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * store["A"]).sum(1)).detach()
''',
        "max_pooled_weights": '''
def grad_cam(model, x, target, layer):
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(A=o))
    score = model(x).gather(1, target[:, None]).sum()
    handle.remove()
    (grad,) = torch.autograd.grad(score, store["A"])
    alpha = grad.amax(dim=(2, 3), keepdim=True)  # max instead of mean over space
    return F.relu((alpha * store["A"]).sum(1)).detach()
''',
    },
    "q3": {
        "max_of_absolute_value": '''
def pointing_game(maps, masks):
    peak = maps.abs().flatten(1).argmax(1)  # the spec says signed
    return masks.flatten(1)[torch.arange(len(maps)), peak].bool()

def mask_mass(maps, masks):
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(1)
    return torch.where(total > 0, (pos * masks.flatten(1)).sum(1) / total.clamp(min=1e-30), torch.zeros_like(total))
''',
        "absolute_mass": '''
def pointing_game(maps, masks):
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1)[torch.arange(len(maps)), peak].bool()

def mask_mass(maps, masks):
    mass = maps.abs().flatten(1)  # counts negative evidence as mass
    return (mass * masks.flatten(1)).sum(1) / mass.sum(1)
''',
        "rows_and_columns_mixed_up": '''
def pointing_game(maps, masks):
    b, h, w = maps.shape
    peak = maps.flatten(1).argmax(1)
    row, col = peak % h, peak // h  # unravels with the wrong side length
    return masks[torch.arange(b), row.clamp(max=h - 1), col.clamp(max=w - 1)].bool()

def mask_mass(maps, masks):
    pos = maps.clamp(min=0).flatten(1)
    total = pos.sum(1)
    return torch.where(total > 0, (pos * masks.flatten(1)).sum(1) / total.clamp(min=1e-30), torch.zeros_like(total))
''',
        "nan_without_positive_mass": '''
def pointing_game(maps, masks):
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1)[torch.arange(len(maps)), peak].bool()

def mask_mass(maps, masks):
    pos = maps.clamp(min=0).flatten(1)
    return (pos * masks.flatten(1)).sum(1) / pos.sum(1)  # 0/0 for an all-negative map
''',
    },
    "q4": {
        "sum_instead_of_mean": '''
def occlusion(model, x, target, window, stride):
    b, c, h, w = x.shape
    total = torch.zeros(b, h, w)
    with torch.no_grad():
        full = model(x).gather(1, target[:, None]).squeeze(1)
        for top in range(0, math.ceil((h - window) / stride) * stride + 1, stride):
            for left in range(0, math.ceil((w - window) / stride) * stride + 1, stride):
                occ = x.clone()
                occ[:, :, top:top + window, left:left + window] = 0.0
                drop = full - model(occ).gather(1, target[:, None]).squeeze(1)
                total[:, top:top + window, left:left + window] += drop[:, None, None]
    return total.unsqueeze(1).expand(b, c, h, w).clone()  # not divided by the count
''',
        "windows_inside_only": '''
def occlusion(model, x, target, window, stride):
    b, c, h, w = x.shape
    total, count = torch.zeros(b, h, w), torch.zeros(h, w)
    with torch.no_grad():
        full = model(x).gather(1, target[:, None]).squeeze(1)
        for top in range(0, h - window + 1, stride):  # misses the cut-off last window
            for left in range(0, w - window + 1, stride):
                occ = x.clone()
                occ[:, :, top:top + window, left:left + window] = 0.0
                drop = full - model(occ).gather(1, target[:, None]).squeeze(1)
                total[:, top:top + window, left:left + window] += drop[:, None, None]
                count[top:top + window, left:left + window] += 1
    return (total / count.clamp(min=1)).unsqueeze(1).expand(b, c, h, w).clone()
''',
        "probability_instead_of_logit": '''
def occlusion(model, x, target, window, stride):
    b, c, h, w = x.shape
    total, count = torch.zeros(b, h, w), torch.zeros(h, w)
    prob = lambda z: F.softmax(model(z), 1).gather(1, target[:, None]).squeeze(1)
    with torch.no_grad():
        full = prob(x)
        for top in range(0, math.ceil((h - window) / stride) * stride + 1, stride):
            for left in range(0, math.ceil((w - window) / stride) * stride + 1, stride):
                occ = x.clone()
                occ[:, :, top:top + window, left:left + window] = 0.0
                drop = full - prob(occ)
                total[:, top:top + window, left:left + window] += drop[:, None, None]
                count[top:top + window, left:left + window] += 1
    return (total / count).unsqueeze(1).expand(b, c, h, w).clone()
''',
    },
}
