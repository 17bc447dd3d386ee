"""fmlab: the helper package of the course *Foundation Models Lab*.

Each module holds one concern; the chapters in ``book/`` import from it.
"""
from .runtime import base_seed, device, profile, seed_everything

__version__ = "0.1.0"
__all__ = ["base_seed", "device", "profile", "seed_everything"]
