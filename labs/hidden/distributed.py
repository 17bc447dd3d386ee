"""Hidden tests of the distributed lab: the same questions on harder cases.

Four ranks, fewer values than ranks (empty chunks and shards), integers, a 3-d tensor, a frozen
parameter (no gradient, no hook, in no bucket, but still broadcast), one bucket for the whole
model, many steps, and a parameter count that the world size divides (equal shards).
"""

_MLP = [6, 8, 8, 3]  # 155 parameters
_SMALL = [4, 4, 2]  # 4*4+4 + 4*2+2 = 30 parameters: 2 and 3 divide it

HIDDEN = {
    "q1": [
        {"name": "4 ranks, 1000 values", "world_size": 4, "seed": 10, "shape": [1000]},
        {"name": "3 ranks, 2 values (an empty chunk)", "world_size": 3, "seed": 11, "shape": [2]},
        {"name": "2 ranks, one value", "world_size": 2, "seed": 12, "shape": [1]},
        {"name": "3 ranks, int64 values", "world_size": 3, "seed": 13, "shape": [17],
         "dtype": "int64"},
        {"name": "3 ranks, a 2x3x4 float32 tensor", "world_size": 3, "seed": 14,
         "shape": [2, 3, 4], "dtype": "float32"},
    ],
    "q2": [
        {"name": "3 ranks, a frozen first-layer bias", "world_size": 3, "seed": 20,
         "widths": _MLP, "per_rank": 2, "steps": 3, "lr": 0.1, "bucket_elems": 30,
         "frozen": ["0.bias"]},
        {"name": "2 ranks, one bucket for the whole model, 5 steps", "world_size": 2,
         "seed": 21, "widths": _MLP, "per_rank": 5, "steps": 5, "lr": 0.05,
         "bucket_elems": 10_000},
        {"name": "4 ranks, buckets of >= 10 elements", "world_size": 4, "seed": 22,
         "widths": _SMALL, "per_rank": 2, "steps": 2, "lr": 0.2, "bucket_elems": 10},
    ],
    "q3": [
        {"name": "2 ranks, 30 parameters (equal shards), 10 steps", "world_size": 2,
         "seed": 30, "widths": _SMALL, "per_rank": 3, "steps": 10, "lr": 0.02},
        {"name": "3 ranks, 30 parameters (equal shards)", "world_size": 3, "seed": 31,
         "widths": _SMALL, "per_rank": 2, "steps": 4, "lr": 0.02, "betas": [0.5, 0.9],
         "eps": 1e-3},
        {"name": "4 ranks, a frozen last-layer weight", "world_size": 4, "seed": 32,
         "widths": _MLP, "per_rank": 2, "steps": 3, "lr": 0.01, "frozen": ["4.weight"]},
    ],
}
