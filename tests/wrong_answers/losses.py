"""Plausible wrong answers to the losses lab; each must keep at most half of its question's points."""

WRONG = {
    "q1": {
        "no_max_subtraction": '''
def softmax(z, dim=-1):
    e = torch.exp(z)  # exp(1e4) = inf, inf / inf = nan
    return e / e.sum(dim=dim, keepdim=True)
''',
        "global_max": '''
def softmax(z, dim=-1):
    e = torch.exp(z - z.max())  # one max for the whole tensor: a row far below it underflows to 0/0
    return e / e.sum(dim=dim, keepdim=True)
''',
        "ignores_dim": '''
def softmax(z, dim=-1):
    e = torch.exp(z - z.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)
''',
    },
    "q2": {
        "sum_not_mean": '''
def cross_entropy(logits, targets):
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(targets * log_p).sum()
''',
        "log_of_softmax": '''
def cross_entropy(logits, targets):
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    p = e / e.sum(dim=1, keepdim=True)
    return -(targets * torch.log(p)).sum(dim=1).mean()  # log(0) = -inf, and 0 * -inf = nan
''',
        "integer_targets_only": '''
def cross_entropy(logits, targets):
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_p[torch.arange(len(targets)), targets.long()].mean()
''',
        "mean_over_classes_too": '''
def cross_entropy(logits, targets):
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(targets * log_p).mean()
''',
    },
    "q3": {
        "seed_formula": '''
def cross_entropy_grad(logits, targets):
    # -1/N sum_i sum_j (y_ij / p_ij - delta_ij) dp_ij/dz_ik, the formula with the spurious delta term
    n, c = logits.shape
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    delta = torch.zeros_like(logits).scatter(1, targets.argmax(1, keepdim=True), 1.0)
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    p = e / e.sum(dim=1, keepdim=True)
    jac = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (N, C, C)
    return -torch.einsum("ij,ijk->ik", targets / p - delta, jac) / n
''',
        "missing_div_n": '''
def cross_entropy_grad(logits, targets):
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True) - targets
''',
        "wrong_sign": '''
def cross_entropy_grad(logits, targets):
    if not targets.is_floating_point():
        targets = torch.zeros_like(logits).scatter(1, targets.unsqueeze(1), 1.0)
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return (targets - e / e.sum(dim=1, keepdim=True)) / logits.shape[0]
''',
    },
    "q4": {
        "probability_form": '''
def binary_cross_entropy_with_logits(z, y):
    s = torch.sigmoid(z)  # sigmoid(100) == 1.0 in float32
    return -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
''',
        "clamped_probability_form": '''
def binary_cross_entropy_with_logits(z, y):
    s = torch.sigmoid(z).clamp(1e-7, 1 - 1e-7)
    return -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
''',
        "naive_softplus": '''
def binary_cross_entropy_with_logits(z, y):
    return (torch.log(1 + torch.exp(z)) - y * z).mean()  # exp(1e4) = inf
''',
        "sum_not_mean": '''
def binary_cross_entropy_with_logits(z, y):
    return (z.clamp(min=0) - y * z + torch.log1p(torch.exp(-z.abs()))).sum()
''',
    },
    "q5": {
        "forward_difference": '''
def numerical_gradient(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    f0 = float(f(x))
    for i in range(x.numel()):
        xp = x.clone()
        xp.view(-1)[i] += eps
        grad.view(-1)[i] = (float(f(xp)) - f0) / eps
    return grad
''',
        "float32": '''
def numerical_gradient(f, x, eps=1e-6):
    x = x.detach().float().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        grad.view(-1)[i] = (f(xp) - f(xm)) / (2 * eps)
    return grad
''',
        "divides_by_eps": '''
def numerical_gradient(f, x, eps=1e-6):
    x = x.detach().double().clone()
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        xp, xm = x.clone(), x.clone()
        xp.view(-1)[i] += eps
        xm.view(-1)[i] -= eps
        grad.view(-1)[i] = (float(f(xp)) - float(f(xm))) / eps
    return grad
''',
    },
}
