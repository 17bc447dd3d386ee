"""Plausible wrong answers to the adversarial lab; each must keep at most half of its question's points."""

WRONG = {
    "q1": {
        "wrong_sign": '''
def fgsm(model, x, y, eps):
    was_training = model.training
    model.eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    model.train(was_training)
    return (x - eps * grad.sign()).clamp(0, 1).detach()  # descends the loss
''',
        "no_clamp": '''
def fgsm(model, x, y, eps):
    was_training = model.training
    model.eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    model.train(was_training)
    return (x + eps * grad.sign()).detach()  # leaves the [0, 1] box
''',
        "train_mode": '''
def fgsm(model, x, y, eps):
    x_req = x.clone().requires_grad_(True)  # model left in train mode: dropout and batch statistics
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y), x_req)
    return (x + eps * grad.sign()).clamp(0, 1).detach()
''',
        "backward_on_params": '''
def fgsm(model, x, y, eps):
    was_training = model.training
    model.eval()
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_req), y).backward()  # also fills the parameters' .grad
    model.train(was_training)
    return (x + eps * x_req.grad.sign()).clamp(0, 1).detach()
''',
    },
    "q2": {
        "wrong_sign": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    was_training = model.training
    model.eval()
    x_adv = x.clone()
    if random_start:
        x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() - alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()
''',
        "no_projection": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    was_training = model.training
    model.eval()
    x_adv = x.clone()
    if random_start:
        x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x_adv.detach() + alpha * grad.sign()).clamp(0, 1)  # drifts out of the eps-ball
    model.train(was_training)
    return x_adv.detach()
''',
        "no_clamp": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    was_training = model.training
    model.eval()
    x_adv = x.clone()
    if random_start:
        x_adv = x_adv + torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)  # not clamped to [0, 1]
    model.train(was_training)
    return x_adv.detach()
''',
        "train_mode": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    x_adv = x.clone()  # the model stays in train mode
    if random_start:
        x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()
''',
        "ignores_random_start": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    was_training = model.training
    model.eval()
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()
''',
        "projects_around_current_point": '''
def pgd(model, x, y, eps, alpha, steps, random_start=True):
    was_training = model.training
    model.eval()
    x_adv = x.clone()
    if random_start:
        x_adv = (x_adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        prev = x_adv.detach()
        x_adv = prev + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, prev - eps), prev + eps).clamp(0, 1)  # ball around x^t
    model.train(was_training)
    return x_adv.detach()
''',
    },
    "q3": {
        "no_zero_grad": '''
def adversarial_training_step(model, optimizer, x, y, eps, alpha, steps, random_start=True):
    x_adv = pgd(model, x, y, eps, alpha, steps, random_start=random_start)
    model.train()
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()  # adds to the gradients of the previous call
    optimizer.step()
    return loss.item()
''',
        "update_in_eval_mode": '''
def adversarial_training_step(model, optimizer, x, y, eps, alpha, steps, random_start=True):
    x_adv = pgd(model, x, y, eps, alpha, steps, random_start=random_start)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x_adv), y)  # whatever mode pgd left: eval
    loss.backward()
    optimizer.step()
    return loss.item()
''',
        "clean_loss": '''
def adversarial_training_step(model, optimizer, x, y, eps, alpha, steps, random_start=True):
    x_adv = pgd(model, x, y, eps, alpha, steps, random_start=random_start)
    model.train()
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)  # trains on the clean batch
    loss.backward()
    optimizer.step()
    return loss.item()
''',
        "attack_in_train_mode": '''
def adversarial_training_step(model, optimizer, x, y, eps, alpha, steps, random_start=True):
    model.train()
    optimizer.zero_grad()
    x_adv = x.clone()  # attack written inline, in train mode: batch norm statistics move
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    loss = F.cross_entropy(model(x_adv), y)
    loss.backward()
    optimizer.step()
    return loss.item()
''',
    },
    "q4": {
        "clean_training": '''
def train_robust_model(train):
    torch.manual_seed(0)
    model = SeedCNN(1, 10, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        for xb, yb in batches(train.x, train.y, 50, generator=torch.Generator().manual_seed(0)):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    return model.eval()
''',
        "eps_far_too_small": '''
def train_robust_model(train):
    torch.manual_seed(0)
    model = SeedCNN(1, 10, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        for xb, yb in batches(train.x, train.y, 50, generator=torch.Generator().manual_seed(0)):
            adversarial_training_step(model, optimizer, xb, yb, 0.01, 0.005, 3)
    return model.eval()
''',
    },
}
