"""Plausible wrong answers for the lab "Training a CNN" (lab id ``cnn``).

Each entry is Python source appended to the master notebook as a last cell; it redefines one
exercise wrongly, and tests/test_labs.py asserts that the question then keeps at most half
its points.
"""

WRONG = {
    "q1": {
        "no_padding": '''
def conv_output_shape(input_shape, layers):
    c, h, w = input_shape
    for layer in layers:
        if layer[0] == "conv":
            _, c, k, s, p = layer
        else:
            _, k, s = layer
        h, w = (h - k) // s + 1, (w - k) // s + 1
    return (c, h, w)
''',
        "pool_changes_nothing_stride_ignored": '''
def conv_output_shape(input_shape, layers):
    c, h, w = input_shape
    for layer in layers:
        if layer[0] == "conv":
            _, c, k, s, p = layer
            h, w = h + 2 * p - k + 1, w + 2 * p - k + 1
        else:
            _, k, s = layer
            h, w = h // k, w // k
    return (c, h, w)
''',
        "square_only": '''
def conv_output_shape(input_shape, layers):
    c, h, _ = input_shape
    for layer in layers:
        if layer[0] == "conv":
            _, c, k, s, p = layer
        else:
            (_, k, s), p = layer, 0
        h = (h + 2 * p - k) // s + 1
    return (c, h, h)
''',
    },
    "q2": {
        "argmax_over_batch": '''
def accuracy(logits, targets):
    if len(targets) == 0:
        raise ValueError("empty")
    return (logits.argmax(dim=0)[: len(targets)] == targets).float().mean().item()
''',
        "count_not_fraction": '''
def accuracy(logits, targets):
    if len(targets) == 0:
        raise ValueError("empty")
    return float((logits.argmax(dim=1) == targets).sum().item())
''',
        "returns_tensor": '''
def accuracy(logits, targets):
    if len(targets) == 0:
        raise ValueError("empty")
    return (logits.argmax(dim=1) == targets).float().mean()
''',
        "empty_is_zero": '''
def accuracy(logits, targets):
    if len(targets) == 0:
        return 0.0
    return (logits.argmax(dim=1) == targets).float().mean().item()
''',
        "last_index_on_ties": '''
def accuracy(logits, targets):
    if len(targets) == 0:
        raise ValueError("empty")
    c = logits.shape[1]
    pred = c - 1 - logits.flip(1).argmax(dim=1)
    return (pred == targets).double().mean().item()
''',
    },
    "q3": {
        "no_zero_grad": '''
def train_one_epoch(model, batches, optimizer, loss_fn):
    model.train()
    total, count = 0.0, 0
    for x, y in batches:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / count
''',
        "unweighted_mean": '''
def train_one_epoch(model, batches, optimizer, loss_fn):
    model.train()
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)
''',
        "forgets_train_mode": '''
def train_one_epoch(model, batches, optimizer, loss_fn):
    total, count = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / count
''',
        "last_batch_loss": '''
def train_one_epoch(model, batches, optimizer, loss_fn):
    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    return loss.item()
''',
    },
    "q4": {
        "untrained": '''
def train_model(train):
    fmlab.seed_everything(0)
    return SeedCNN(1, 10, 28)
''',
        "other_architecture": '''
def train_model(train):
    fmlab.seed_everything(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
''',
        "one_batch_only": '''
def train_model(train):
    fmlab.seed_everything(0)
    model = SeedCNN(1, 10, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    train_one_epoch(model, [(train.x[:32], train.y[:32])], optimizer, F.cross_entropy)
    return model
''',
    },
}
