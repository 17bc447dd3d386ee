"""Plausible wrong answers to the compression lab; each must keep at most half of its question's points."""

WRONG = {
    "q1": {
        "signed_value": '''
def global_magnitude_masks(weights, amount):
    scores = torch.cat([w.detach().flatten() for w in weights])  # no abs: prunes the most negative
    k = round(amount * scores.numel())
    keep = torch.ones_like(scores)
    if k > 0:
        keep[torch.topk(scores, k, largest=False).indices] = 0.0
    return [p.view_as(w) for p, w in zip(keep.split([w.numel() for w in weights]), weights)]
''',
        "per_layer": '''
def global_magnitude_masks(weights, amount):
    masks = []
    for w in weights:  # the same fraction of each tensor, not one global ranking
        scores = w.detach().abs().flatten()
        keep = torch.ones_like(scores)
        k = round(amount * scores.numel())
        if k > 0:
            keep[torch.topk(scores, k, largest=False).indices] = 0.0
        masks.append(keep.view_as(w))
    return masks
''',
        "floor_count": '''
def global_magnitude_masks(weights, amount):
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = int(amount * scores.numel())  # floors instead of rounding
    keep = torch.ones_like(scores)
    if k > 0:
        keep[torch.topk(scores, k, largest=False).indices] = 0.0
    return [p.view_as(w) for p, w in zip(keep.split([w.numel() for w in weights]), weights)]
''',
    },
    "q2": {
        "scale_from_max": '''
def quantize_per_channel(w, bits=8, scheme="symmetric"):
    dims = tuple(range(1, w.dim())); shape = (-1,) + (1,) * (w.dim() - 1)
    lo, hi = w.amin(dim=dims).clamp(max=0), w.amax(dim=dims).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if scheme == "symmetric":
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (hi / ((qmax - qmin) / 2)).clamp(min=eps)  # max, not max |w|
        zero = torch.zeros_like(scale, dtype=torch.int64); dtype = torch.int8
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero = (qmin - torch.round(lo / scale)).to(torch.int64).clamp(qmin, qmax); dtype = torch.uint8
    q = torch.round(w / scale.view(shape)) + zero.view(shape)
    return q.clamp(qmin, qmax).to(dtype), scale, zero
''',
        "zero_point_not_rounded": '''
def quantize_per_channel(w, bits=8, scheme="symmetric"):
    dims = tuple(range(1, w.dim())); shape = (-1,) + (1,) * (w.dim() - 1)
    lo, hi = w.amin(dim=dims).clamp(max=0), w.amax(dim=dims).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if scheme == "symmetric":
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=eps)
        zero = torch.zeros_like(scale); dtype = torch.int8
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero = qmin - lo / scale  # a real-valued zero point
        dtype = torch.uint8
    q = torch.round(w / scale.view(shape) + zero.view(shape))
    return q.clamp(qmin, qmax).to(dtype), scale, zero
''',
        "range_without_zero": '''
def quantize_per_channel(w, bits=8, scheme="symmetric"):
    dims = tuple(range(1, w.dim())); shape = (-1,) + (1,) * (w.dim() - 1)
    lo, hi = w.amin(dim=dims), w.amax(dim=dims)  # the range need not include 0
    eps = torch.finfo(torch.float32).eps
    if scheme == "symmetric":
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=eps)
        zero = torch.zeros_like(scale, dtype=torch.int64); dtype = torch.int8
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero = (qmin - torch.round(lo / scale)).to(torch.int64)  # and is not clamped
        dtype = torch.uint8
    q = torch.round(w / scale.view(shape)) + zero.view(shape)
    return q.clamp(qmin, qmax).to(dtype), scale, zero
''',
        "restricted_range_127": '''
def quantize_per_channel(w, bits=8, scheme="symmetric"):
    dims = tuple(range(1, w.dim())); shape = (-1,) + (1,) * (w.dim() - 1)
    lo, hi = w.amin(dim=dims).clamp(max=0), w.amax(dim=dims).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if scheme == "symmetric":
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (torch.maximum(-lo, hi) / qmax).clamp(min=eps)  # max|w| / 127, not / 127.5
        zero = torch.zeros_like(scale, dtype=torch.int64); dtype = torch.int8
    else:
        qmin, qmax = 0, 2**bits - 1
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zero = (qmin - torch.round(lo / scale)).to(torch.int64).clamp(qmin, qmax); dtype = torch.uint8
    q = torch.round(w / scale.view(shape)) + zero.view(shape)
    return q.clamp(qmin, qmax).to(dtype), scale, zero
''',
    },
    "q3": {
        "teacher_not_detached": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_r = F.log_softmax(teacher_logits / T, dim=1)  # the teacher gets gradient too
    kl = (log_r.exp() * (log_r - log_p)).sum(dim=1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
''',
        "kl_wrong_way_round": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_r = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = (log_p.exp() * (log_p - log_r)).sum(dim=1).mean()  # KL(student || teacher)
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
''',
        "missing_t_squared": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_r = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = (log_r.exp() * (log_r - log_p)).sum(dim=1).mean()
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
''',
        "temperature_on_student_only": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_r = F.log_softmax(teacher_logits.detach(), dim=1)  # teacher not softened
    kl = (log_r.exp() * (log_r - log_p)).sum(dim=1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(student_logits, targets)
''',
        "soft_cross_entropy_not_kl": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    r = F.softmax(teacher_logits.detach() / T, dim=1)
    soft = -(r * log_p).sum(dim=1).mean()  # cross-entropy: KL plus the teacher's entropy
    return alpha * T * T * soft + (1 - alpha) * F.cross_entropy(student_logits, targets)
''',
        "alpha_swapped": '''
def distillation_loss(student_logits, teacher_logits, targets, T, alpha):
    log_p = F.log_softmax(student_logits / T, dim=1)
    log_r = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = (log_r.exp() * (log_r - log_p)).sum(dim=1).mean()
    return (1 - alpha) * T * T * kl + alpha * F.cross_entropy(student_logits, targets)
''',
    },
    "q4": {
        "no_straight_through": '''
def fake_quantize(w, bits=8):
    q, scale, zero = quantize_per_channel(w, bits, "symmetric")
    shape = (-1,) + (1,) * (w.dim() - 1)
    return scale.view(shape) * torch.round(w / scale.view(shape)).clamp(
        -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)  # round() passes no gradient
''',
        "gradient_through_the_scale": '''
def fake_quantize(w, bits=8):
    dims = tuple(range(1, w.dim())); shape = (-1,) + (1,) * (w.dim() - 1)
    scale = w.abs().amax(dim=dims).view(shape) / ((2**bits - 1) / 2)  # not detached
    q = torch.round(w / scale).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).detach()
    return q * scale  # the gradient flows through the scale, not straight through
''',
        "not_quantized": '''
def fake_quantize(w, bits=8):
    return w * 1.0  # the identity: the right gradient, but nothing is quantized
''',
    },
    "q5": {
        "masks_not_kept": '''
def train_sparse_model(train):
    torch.manual_seed(0)
    model = LeNet300100()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(12):
        if epoch == 10:  # prune once, then retrain without keeping the zeros
            masks = global_magnitude_masks([l.weight for l in layers], 0.9)
            with torch.no_grad():
                for l, m in zip(layers, masks):
                    l.weight.mul_(m)
        for xb, yb in batches(train.x, train.y, 64, generator=gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()
''',
        "no_retraining": '''
def train_sparse_model(train):
    torch.manual_seed(0)
    model = LeNet300100()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        for xb, yb in batches(train.x, train.y, 64, generator=gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
    masks = global_magnitude_masks([l.weight for l in layers], 0.9)  # one shot, no retraining
    with torch.no_grad():
        for l, m in zip(layers, masks):
            l.weight.mul_(m)
    return model.eval()
''',
        "half_pruned": '''
def train_sparse_model(train):
    torch.manual_seed(0)
    model = LeNet300100()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        for xb, yb in batches(train.x, train.y, 64, generator=gen):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
    masks = global_magnitude_masks([l.weight for l in layers], 0.5)  # only half
    with torch.no_grad():
        for l, m in zip(layers, masks):
            l.weight.mul_(m)
    return model.eval()
''',
    },
}
