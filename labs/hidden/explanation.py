"""Hidden cases of the lab "Explaining predictions" (lab id ``explanation``).

Plain data only; labs/checks/explanation.py prepares, runs and grades them. Keep this file out
of the students' repositories (see book/instructors.md).
"""

HIDDEN = {
    "q1": [
        {"name": "a network without batch norm, noise baseline, 4 steps", "model": "avg",
         "n": 5, "steps": 4, "baseline": "noise", "seed": 2},
        {"name": "two steps", "model": "gmp", "n": 3, "steps": 2, "seed": 3, "offset": 7},
        {"name": "explaining a class other than the label", "model": "trained", "n": 6,
         "steps": 24, "target": "other", "offset": 40},
        {"name": "a batch of one, 32 steps", "model": "gmp", "n": 1, "steps": 32, "seed": 4,
         "baseline": "grey"},
    ],
    "q2": [
        {"name": "a plain CNN, conv2", "model": "avg", "n": 4, "layer": "conv2", "seed": 2},
        {"name": "a plain CNN, relu1 (full resolution)", "model": "avg", "n": 3,
         "layer": "relu1", "seed": 5},
        {"name": "the first block (16 x 16)", "model": "gmp", "n": 3,
         "layer": "features.block1", "seed": 6},
        {"name": "trained network, another class", "model": "trained", "n": 5,
         "layer": "features.block3", "target": "other", "offset": 50},
    ],
    "q3": [
        {"name": "tall maps, 11 x 4", "n": 20, "size": (11, 4), "seed": 2},
        {"name": "a map with no positive value", "n": 5, "size": (8, 8), "seed": 3,
         "all_negative": True},
        {"name": "one row", "n": 6, "size": (1, 15), "seed": 4},
        {"name": "integrated gradients, other images", "source": "ig", "n": 8,
         "size": (32, 32), "offset": 60, "seed": 1},
    ],
    "q4": [
        {"name": "a plain CNN, window 4, stride 3", "model": "avg", "n": 2, "window": 4,
         "stride": 3, "seed": 2},
        {"name": "one window over the whole image", "model": "gmp", "n": 3, "window": 32,
         "stride": 1, "seed": 4},
        {"name": "window 5, stride 5 (cut at the border)", "model": "trained", "n": 2,
         "window": 5, "stride": 5, "offset": 70, "target": "other"},
    ],
}
