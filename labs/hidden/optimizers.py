"""Hidden tests of the optimizers lab: the same questions on harder cases.

Parameters without gradients, two parameter groups with their own lr and weight decay, a
parameter that misses some steps (its own step count), many steps, float32, and a state_dict
saved and loaded into a fresh optimizer half-way.
"""

_ADAM_LIKE = [
    {"name": "frozen parameter (no gradient)", "seed": 20, "steps": 50, "frozen": True,
     "options": {"lr": 0.01}},
    {"name": "two parameter groups", "seed": 21, "steps": 100,
     "groups": {"lr": 0.003, "weight_decay": 0.2}, "options": {"lr": 0.01, "weight_decay": 0.05}},
    {"name": "a parameter that misses every third step", "seed": 22, "steps": 120, "skip_every": 3,
     "options": {"lr": 0.01}},
    {"name": "300 steps, float32", "seed": 23, "steps": 300, "dtype": "float32", "options": {"lr": 0.003}},
    {"name": "state_dict saved and loaded at step 60", "seed": 24, "steps": 120, "reload_at": 60,
     "groups": {"lr": 0.005}, "skip_every": 4, "options": {"lr": 0.01, "weight_decay": 0.1}},
    {"name": "everything at once, small gradients", "seed": 25, "steps": 150, "reload_at": 75,
     "frozen": True, "skip_every": 3, "grad_scale": 1e-3, "groups": {"lr": 0.02, "weight_decay": 0.0},
     "options": {"lr": 0.01, "eps": 1e-3, "weight_decay": 0.3}},
]


def _rmsprop(case):
    case = dict(case, options={k: v for k, v in case["options"].items()})
    case["options"].setdefault("alpha", 0.95)
    return case


HIDDEN = {
    "q1": [dict(c, options=dict(c["options"], betas=(0.85, 0.995))) for c in _ADAM_LIKE],
    "q2": [dict(c, name="AdamW: " + c["name"]) for c in _ADAM_LIKE],
    "q3": [_rmsprop(dict(c, name="RMSprop: " + c["name"])) for c in _ADAM_LIKE],
    "q4": [
        {"name": "no warm-up", "total_steps": 80, "warmup_steps": 0, "base_lr": 0.5, "min_lr": 0.0},
        {"name": "one warm-up step", "total_steps": 30, "warmup_steps": 1, "base_lr": 0.2, "min_lr": 0.01},
        {"name": "long run", "total_steps": 1000, "warmup_steps": 100, "base_lr": 3e-4, "min_lr": 3e-5},
        {"name": "warm-up until the last step", "total_steps": 25, "warmup_steps": 24, "base_lr": 1.0,
         "min_lr": 0.5},
    ],
}
