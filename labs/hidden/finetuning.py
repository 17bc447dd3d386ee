"""Hidden cases of the lab "Pre-training and fine-tuning" (lab id ``finetuning``): edge cases
for the same questions.

Plain data only; labs/checks/finetuning.py prepares, runs and grades them. Keep this file out of
the students' repositories (see book/instructors.md).
"""

HIDDEN = {
    "q1": [
        {"name": "a causal mask, float64", "seed": 3, "batch": (2, 2), "T": 6, "d": 8,
         "mask": "causal", "dtype": "float64", "scale": 40.0},
        {"name": "one key per query", "seed": 4, "batch": (3,), "T": 4, "S": 5, "d": 4,
         "mask": "one_key", "scale": 12.0},
        {"name": "large scores", "seed": 5, "batch": (2,), "T": 5, "d": 16, "scale": 30.0,
         "mask": "random"},
        {"name": "no batch dimensions", "seed": 6, "batch": (), "T": 7, "d": 3, "dv": 2},
        {"name": "queries of size 1", "seed": 7, "batch": (4,), "T": 3, "S": 4, "d": 1,
         "scale": 12.0},
    ],
    "q2": [
        {"name": "a square layer", "seed": 2, "in": 6, "out": 6, "r": 2, "alpha": 8.0},
        {"name": "no bias", "seed": 3, "in": 4, "out": 9, "r": 1, "alpha": 2.0, "bias": False},
        {"name": "inputs with two batch dimensions", "seed": 4, "in": 5, "out": 3, "r": 4,
         "alpha": 2.0, "batch": (2, 3)},
        {"name": "against peft's LoRA layer", "seed": 5, "in": 12, "out": 10, "r": 3,
         "alpha": 5.0, "reference": "peft"},
    ],
    "q3": [
        {"name": "a model handed over frozen", "model": "vit", "patterns": ["head.*"],
         "start": "frozen"},
        {"name": "a half-frozen model", "model": "vit", "patterns": ["blocks.?.attn.*", "norm.*"],
         "start": "mixed"},
        {"name": "no patterns", "model": "vit", "patterns": []},
        {"name": "everything", "model": "vit", "patterns": ["*"], "start": "frozen"},
        {"name": "a plain Sequential", "model": "mlp", "patterns": ["2.*", "3.weight"]},
    ],
    "q4": [
        {"name": "5 labels per class", "k": 5, "seed": 1, "full_at": 0.55, "zero_at": 0.30},
    ],
}
