"""Plausible wrong answers to the optimizers lab; each must score below full marks.

Each entry is Python source appended as a last cell to labs/03_optimizers.ipynb; it redefines
one exercise wrongly (the namespace already holds ``torch`` and ``math``).
"""

# A template of the three optimizer classes; each wrong answer changes one piece of it.
_ADAM = '''
class {name}(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay={wd_default}):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        self.t += 1
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = {t}
                {decay}
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                {update}
'''
_L2 = "g = g + wd * p if wd else g"
_DECOUPLED = "p.mul_(1 - lr * wd)"
_RIGHT = "p.sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))"


def _adam(name="Adam", wd_default="0.0", t='state["step"]', decay=_L2, update=_RIGHT):
    return _ADAM.format(name=name, wd_default=wd_default, t=t, decay=decay, update=update)


def _adamw(**kw):
    return _adam(name="AdamW", wd_default="1e-2", **{"decay": _DECOUPLED, **kw})


_RMSPROP = '''
class RMSprop(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, alpha, eps, wd = group["lr"], group["alpha"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + wd * p
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = {init}
                state["step"] += 1
                v = state["square_avg"]
                {average}
                {update}
'''


def _rmsprop(init="torch.zeros_like(p)", average="v.mul_(alpha).addcmul_(g, g, value=1 - alpha)",
             update="p.sub_(lr * g / (v.sqrt() + eps))"):
    return _RMSPROP.format(init=init, average=average, update=update)


_SCHEDULE = '''
def warmup_cosine(step, total_steps, warmup_steps, base_lr, min_lr=0.0):
    if step < warmup_steps:
        return {warm}
    progress = {progress}
    return {cos}
'''


def _schedule(warm="base_lr * (step + 1) / warmup_steps",
              progress="(step - warmup_steps) / (total_steps - warmup_steps)",
              cos="min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2"):
    return _SCHEDULE.format(warm=warm, progress=progress, cos=cos)


WRONG = {
    "q1": {
        "no_bias_correction": _adam(update="p.sub_(lr * m / (v.sqrt() + eps))"),
        "eps_inside_sqrt": _adam(update="p.sub_(lr * (m / (1 - b1**t)) / (v / (1 - b2**t) + eps).sqrt())"),
        "eps_before_bias_correction": _adam(
            update="p.sub_(lr * (m / (1 - b1**t)) / ((v.sqrt() + eps) / math.sqrt(1 - b2**t)))"),
        "weight_decay_ignored": _adam(decay="pass"),
        "decoupled_decay_in_adam": _adam(decay=_DECOUPLED),
        # Right on a plain run; wrong after a state_dict reload and for a parameter that misses steps.
        "step_count_on_the_optimizer": _adam(t="self.t"),
    },
    "q2": {
        "l2_added_to_gradient": _adamw(decay=_L2),
        "decay_without_lr": _adamw(decay="p.mul_(1 - wd)"),
        "decay_after_the_step": _adamw(
            decay="pass", update=_RIGHT + "\n                p.mul_(1 - lr * wd)"),
        "no_default_decay": _adam(name="AdamW", decay=_DECOUPLED),
        "no_bias_correction": _adamw(update="p.sub_(lr * m / (v.sqrt() + eps))"),
    },
    "q3": {
        "eps_inside_sqrt": _rmsprop(update="p.sub_(lr * g / (v + eps).sqrt())"),
        "adam_style_bias_correction": _rmsprop(
            update='p.sub_(lr * g / ((v / (1 - alpha ** state["step"])).sqrt() + eps))'),
        "alpha_on_the_wrong_term": _rmsprop(average="v.mul_(1 - alpha).addcmul_(g, g, value=alpha)"),
        "average_starts_at_first_g2": _rmsprop(init="p.grad**2"),
    },
    "q4": {
        "warmup_from_zero": _schedule(warm="base_lr * step / warmup_steps"),
        "cosine_over_all_steps": _schedule(progress="step / total_steps"),
        "min_lr_ignored": _schedule(cos="base_lr * (1 + math.cos(math.pi * progress)) / 2"),
        "linear_decay": _schedule(cos="min_lr + (base_lr - min_lr) * (1 - progress)"),
    },
}
