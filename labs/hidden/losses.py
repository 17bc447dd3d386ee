"""Hidden cases of the losses lab: extreme logits (|z| up to 1e4), a batch of one, float64
(the result must keep the dtype), and integer vs one-hot targets."""
import torch
import torch.nn.functional as F

D64 = torch.float64


def _randn(*shape, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=D64) * scale).to(dtype)


def _labels(n, c, seed):
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


# Rows whose largest logits differ by 2e4: one max over the whole tensor underflows a row.
_EXTREME = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, -2e4, -1.5e4, -1e4], [3.0, 1e4, 1e4, -1e4]])
_TARGETS = torch.tensor([1, 0, 2])

HIDDEN = {
    "q1": [
        {"name": "logits of 1e4", "z": _EXTREME.clone(), "dim": -1},
        {"name": "logits of 1e4, dim=0", "z": _EXTREME.clone(), "dim": 0},
        {"name": "a batch of one", "z": _randn(1, 10, seed=30), "dim": -1},
        {"name": "float64", "z": _randn(4, 6, scale=20.0, seed=31, dtype=D64), "dim": -1},
        {"name": "a (2, 3, 4) tensor, dim=1", "z": _randn(2, 3, 4, scale=50.0, seed=32), "dim": 1},
    ],
    "q2": [
        {"name": "logits of 1e4, integer targets", "logits": _EXTREME.clone(), "targets": _TARGETS.clone()},
        {"name": "logits of 1e4, one-hot targets", "logits": _EXTREME.clone(),
         "targets": F.one_hot(_TARGETS, 4).float()},
        {"name": "a batch of one", "logits": _randn(1, 7, seed=33), "targets": torch.tensor([6])},
        {"name": "float64, integer targets", "logits": _randn(5, 3, scale=4.0, seed=34, dtype=D64),
         "targets": _labels(5, 3, 35)},
        {"name": "float64, one-hot targets", "logits": _randn(5, 3, scale=4.0, seed=34, dtype=D64),
         "targets": F.one_hot(_labels(5, 3, 35), 3).to(D64)},
        {"name": "float64, probability targets", "logits": _randn(4, 5, seed=36, dtype=D64),
         "targets": torch.softmax(_randn(4, 5, scale=2.0, seed=37, dtype=D64), 1)},
    ],
    "q3": [
        {"name": "logits of 1e4, integer targets", "logits": _EXTREME.clone(), "targets": _TARGETS.clone()},
        {"name": "logits of 1e4, one-hot targets", "logits": _EXTREME.clone(),
         "targets": F.one_hot(_TARGETS, 4).float()},
        {"name": "a batch of one", "logits": _randn(1, 5, scale=3.0, seed=38), "targets": torch.tensor([2])},
        {"name": "float64, integer targets", "logits": _randn(6, 4, scale=3.0, seed=39, dtype=D64),
         "targets": _labels(6, 4, 40)},
        {"name": "float64, one-hot targets", "logits": _randn(6, 4, scale=3.0, seed=39, dtype=D64),
         "targets": F.one_hot(_labels(6, 4, 40), 4).to(D64)},
        {"name": "float64, probability targets", "logits": _randn(3, 5, seed=41, dtype=D64),
         "targets": torch.softmax(_randn(3, 5, seed=42, dtype=D64), 1)},
    ],
    "q4": [
        {"name": "logits of +-1e4", "z": torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0]),
         "y": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])},
        {"name": "logits of +-1e4, soft targets", "z": torch.tensor([[1e4, -1e4], [-5e3, 2e3]]),
         "y": torch.tensor([[0.3, 0.9], [0.5, 0.1]])},
        {"name": "a batch of one", "z": torch.tensor([-2.5]), "y": torch.tensor([1.0])},
        {"name": "float64", "z": _randn(6, scale=30.0, seed=43, dtype=D64),
         "y": torch.rand(6, generator=torch.Generator().manual_seed(44), dtype=D64)},
    ],
    "q5": [
        {"name": "x sin 3x, float64 (3, 2)", "f": "x_sin_x", "x": _randn(3, 2, seed=45, dtype=D64), "tol": 1e-7},
        {"name": "logsumexp of a (2, 2, 2) tensor", "f": "logsumexp", "x": _randn(2, 2, 2, seed=46, dtype=D64),
         "tol": 1e-7},
        {"name": "a batch of one", "f": "cubic", "x": torch.tensor([1.7], dtype=D64), "tol": 1e-7},
        {"name": "float32 x (compute in float64)", "f": "cubic", "x": _randn(4, seed=47), "tol": 1e-7},
        {"name": "cross-entropy, eps=1e-4", "f": "cross_entropy", "x": _randn(2, 3, scale=2.0, seed=48, dtype=D64),
         "targets": torch.tensor([2, 0]), "eps": 1e-4, "tol": 1e-6},
    ],
}
