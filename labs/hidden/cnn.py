"""Hidden cases of the lab "Training a CNN" (lab id ``cnn``): edge cases for the same questions.

Plain data only; labs/checks/cnn.py prepares, runs and grades them. Keep this file out of the
students' repositories (see book/instructors.md).
"""

HIDDEN = {
    "q1": [
        {"name": "an empty stack", "input_shape": (3, 7, 5), "layers": []},
        {"name": "a non-square input", "input_shape": (2, 15, 9),
         "layers": [("conv", 4, 3, 2, 1), ("pool", 3, 2)]},
        {"name": "a kernel as large as the input", "input_shape": (8, 5, 5), "layers": [("conv", 10, 5, 1, 0)]},
        {"name": "a stride that does not divide", "input_shape": (1, 10, 10),
         "layers": [("conv", 6, 3, 3, 0), ("pool", 2, 2)]},
        {"name": "a pool with stride 1", "input_shape": (4, 12, 12),
         "layers": [("pool", 3, 1), ("conv", 2, 1, 1, 0)]},
    ],
    "q2": [
        {"name": "a batch of one", "n": 1, "right": 1, "seed": 3},
        {"name": "an empty batch", "n": 0, "seed": 4},
        {"name": "tied logits", "n": 10, "seed": 5, "ties": True},
        {"name": "float64 logits", "n": 50, "seed": 6, "dtype": "float64"},
        {"name": "int32 targets", "n": 50, "seed": 7, "target_dtype": "int32"},
        {"name": "large logits", "n": 64, "seed": 8, "scale": 1e4},
    ],
    "q3": [
        {"name": "a last batch of 3", "seed": 2, "batch_sizes": [16, 16, 3],
         "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
        {"name": "a model handed over in eval mode", "seed": 3, "batch_sizes": [8, 8],
         "optimizer": {"name": "sgd", "lr": 0.1}, "start_in_eval": True},
        {"name": "batches of one", "seed": 4, "batch_sizes": [1, 1, 1],
         "optimizer": {"name": "sgd", "lr": 0.05}},
        {"name": "Adam", "seed": 5, "batch_sizes": [10, 7], "optimizer": {"name": "adam", "lr": 0.01}},
    ],
    "q4": [
        {"name": "1,000 training images", "n_train": 1000, "full_at": 0.80, "zero_at": 0.60},
    ],
}
