"""Hidden cases of the lab "Adversarial examples and adversarial training" (lab id ``adversarial``).

Plain data only; labs/checks/adversarial.py prepares, runs and grades them. Keep this file out of
the students' repositories (see book/instructors.md). q4 has no hidden case: its public case
already measures the returned model on held-out images with the grader's own attack.
"""

HIDDEN = {
    "q1": [
        {"name": "a batch of one", "model": "mlp", "n": 1, "eps": 0.3, "offset": 40, "seed": 2},
        {"name": "eps = 0 returns x", "model": "bn", "n": 8, "eps": 0.0, "seed": 3},
        {"name": "a trained CNN, eps = 0.05", "model": "trained", "n": 64, "eps": 0.05, "offset": 300},
    ],
    "q2": [
        {"name": "one step of size eps without a random start is FGSM", "model": "mlp", "n": 16,
         "eps": 0.2, "alpha": 0.2, "steps": 1, "random_start": False, "seed": 4},
        {"name": "a trained CNN without a random start", "model": "trained", "n": 64, "eps": 0.1,
         "alpha": 0.02, "steps": 8, "random_start": False, "offset": 500},
        {"name": "the random start on a batch-norm model", "model": "bn", "n": 16, "eps": 0.2,
         "alpha": 0.05, "steps": 0, "random_start": True, "seed": 5},
        {"name": "a trained CNN, eps = 0.2, a step larger than eps", "model": "trained", "n": 200,
         "eps": 0.2, "alpha": 0.3, "steps": 6, "random_start": True, "offset": 600, "torch_seed": 7},
    ],
    "q3": [
        {"name": "Adam, three calls", "model": "mlp", "n": 48, "calls": 3, "eps": 0.3, "alpha": 0.1,
         "steps": 2, "seed": 6, "optimizer": {"name": "adam", "lr": 0.01}},
        {"name": "a trained CNN, one call", "model": "trained", "n": 40, "calls": 1, "eps": 0.1,
         "alpha": 0.03, "steps": 4, "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.5}},
        {"name": "batch norm in train mode, steps = 0", "model": "bn_nodrop", "n": 20, "calls": 2,
         "eps": 0.1, "alpha": 0.05, "steps": 0, "optimizer": {"name": "sgd", "lr": 0.1}},
    ],
}
