r"""Private helpers of the dataset modules: seeds to numpy generators, arrays to float32 tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["Seed"]

#: Every sampler takes an explicit seed: an ``int``, a ``numpy.random.Generator`` (used as is) or a
#: ``torch.Generator``; it returns a float32 tensor of shape ``(n, d)``.
Seed = int | np.random.Generator | torch.Generator


def _rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int, a numpy Generator (used as is) or a torch Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=seed)))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be an int, numpy.random.Generator or torch.Generator, got {seed!r}")


def _tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
