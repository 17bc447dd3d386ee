"""Hidden cases of the lab "Compression" (lab id ``compression``).

Plain data only; labs/checks/compression.py prepares, runs and grades them. Keep this file out of
the students' repositories (see book/instructors.md). q5 has no hidden case: its public case
already measures the returned model on held-out images.
"""

HIDDEN = {
    "q1": [
        {"name": "amount 0 keeps everything", "shapes": [[5, 7], [3, 5]], "scales": [1.0, 1.0],
         "amount": 0.0, "seed": 11},
        {"name": "amount 1 prunes everything", "shapes": [[4, 4]], "scales": [1.0],
         "amount": 1.0, "seed": 12},
        {"name": "LeNet-300-100's shapes, 90%", "shapes": [[300, 784], [100, 300], [10, 100]],
         "scales": [0.04, 0.1, 0.3], "amount": 0.9, "seed": 13},
        {"name": "already-zero weights go first, 60%", "shapes": [[20, 10], [10, 20]],
         "scales": [1.0, 0.5], "amount": 0.6, "zeros": 50, "seed": 14},
        {"name": "a fraction that rounds up (k = round(amount * N))", "shapes": [[10, 10]],
         "scales": [1.0], "amount": 0.337, "seed": 15},
    ],
    "q2": [
        {"name": "affine 4-bit", "shape": [10, 30], "bits": 4, "scheme": "affine", "seed": 21},
        {"name": "symmetric 2-bit, a conv weight", "shape": [6, 4, 3, 3], "bits": 2,
         "scheme": "symmetric", "seed": 22},
        {"name": "a channel of zeros (scale clamped at eps)", "shape": [5, 9], "bits": 8,
         "scheme": "affine", "zero_row": True, "seed": 23},
        {"name": "symmetric int8, large weight", "shape": [64, 300], "bits": 8,
         "scheme": "symmetric", "positive_rows": True, "seed": 24},
        {"name": "affine uint8, a conv weight", "shape": [8, 2, 5, 5], "bits": 8,
         "scheme": "affine", "positive_rows": True, "seed": 25},
    ],
    "q3": [
        {"name": "labels only (alpha = 0)", "n": 7, "k": 10, "T": 3.0, "alpha": 0.0, "seed": 31},
        {"name": "Hinton's temperature (T = 20)", "n": 16, "k": 10, "T": 20.0, "alpha": 0.7,
         "seed": 32},
        {"name": "one example", "n": 1, "k": 3, "T": 5.0, "alpha": 0.5, "seed": 33},
    ],
    "q4": [
        {"name": "4 bits, a conv weight", "shape": [4, 3, 3, 3], "bits": 4, "seed": 41},
        {"name": "3 bits", "shape": [7, 11], "bits": 3, "positive_rows": True, "seed": 42},
    ],
}
