"""Plausible wrong answers to the fine-tuning lab; each must keep at most half of its question's points."""

WRONG = {
    "q1": {
        "softmax_over_queries": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-2) @ v  # normalises over the queries
''',
        "no_scaling": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)  # no 1/sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v
''',
        "mask_after_softmax": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    if mask is not None:
        weights = weights * mask  # rows no longer sum to one
    return weights @ v
''',
        "naive_exp": '''
def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    e = torch.exp(scores)  # overflows for large scores
    if mask is not None:
        e = e * mask
    return (e / e.sum(-1, keepdim=True)) @ v
''',
    },
    "q2": {
        "alpha_not_over_r": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha  # should be alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merge(self):
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight += self.scale * self.B @ self.A
        return merged
''',
        "both_random": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.randn(base.out_features, r) * 0.01)  # the output moves at once

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merge(self):
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight += self.scale * self.B @ self.A
        return merged
''',
        "base_trainable": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / r  # base weights left trainable
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merge(self):
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight += self.scale * self.B @ self.A
        return merged
''',
        "merge_transposed": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merge(self):
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            delta = self.scale * self.A.T @ self.B.T  # (in, out): the transpose of the update
            merged.weight += delta if delta.shape == merged.weight.shape else delta.T
        return merged
''',
        "merge_in_place": '''
class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.scale = base, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)

    def merge(self):
        with torch.no_grad():
            self.base.weight += self.scale * self.B @ self.A  # overwrites the source weights
        return self.base
''',
    },
    "q3": {
        "never_unfreezes": '''
def freeze(model, patterns):
    for name, p in model.named_parameters():
        if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)  # matching parameters keep whatever they had
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
''',
        "counts_tensors": '''
def freeze(model, patterns):
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
    return sum(1 for p in model.parameters() if p.requires_grad)  # tensors, not values
''',
        "prefix_match": '''
def freeze(model, patterns):
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(pat.rstrip("*")) for pat in patterns))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
''',
    },
    "q4": {
        "untrained_head": '''
def train_probe(backbone, train):
    return nn.Linear(backbone.head.in_features, len(train.classes))  # never trained
''',
        "learning_rate_too_small": '''
def train_probe(backbone, train):
    torch.manual_seed(0)
    with torch.no_grad():
        feats = backbone.eval().features(train.x)
    head = nn.Linear(feats.shape[1], len(train.classes))
    opt = torch.optim.SGD(head.parameters(), lr=1e-4)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(head(feats), train.y).backward()
        opt.step()
    return head
''',
        "trains_the_backbone_too": '''
def train_probe(backbone, train):
    torch.manual_seed(0)
    head = nn.Linear(backbone.head.in_features, len(train.classes))
    params = list(backbone.parameters()) + list(head.parameters())  # the backbone trains too
    opt = torch.optim.Adam(params, lr=1e-3)
    backbone.train()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(head(backbone.features(train.x)), train.y).backward()
        opt.step()
    backbone.eval()
    return head
''',
        "head_on_source_logits": '''
def train_probe(backbone, train):
    torch.manual_seed(0)
    with torch.no_grad():
        feats = backbone.eval()(train.x)  # the source head's 5 logits, not the features
    head = nn.Linear(feats.shape[1], len(train.classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(head(feats), train.y).backward()
        opt.step()
    return head
''',
    },
}
