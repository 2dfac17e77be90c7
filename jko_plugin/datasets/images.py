r"""scikit-learn's bundled 8x8 digits (64-d), dequantised and standardised: an image set with no download."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._validate import positive_int
from ._common import Seed, _rng, _tensor

__all__ = ["digits", "digits_labelled"]


def digits(n: int | None = None, *, seed: Seed) -> Tensor:
    """scikit-learn's bundled 8x8 digits (1797 images, 64-d), dequantised and standardised.

    Pixels (integers 0..16) become ``(v + u) / 17`` with ``u ~ U[0, 1)``, then every feature is
    standardised by the mean and standard deviation of the whole dequantised set. Rows are
    shuffled; ``n`` (at most 1797) takes the first ``n``. Needs scikit-learn (no download).
    """
    return digits_labelled(n, seed=seed)[0]


def digits_labelled(n: int | None = None, *, seed: Seed) -> tuple[Tensor, Tensor]:
    """``digits`` (the same images for the same seed) with their classes: ``(x, labels)``, float32
    ``(n, 64)`` and int64 ``(n,)`` with the digit 0..9 each image shows."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    raw = bunch.data.astype(np.float64)
    if n is not None:
        positive_int("n", n)
        if n > raw.shape[0]:
            raise ValueError(f"n must be at most {raw.shape[0]} for digits, got {n}")
    rng = _rng(seed)
    x = (raw + rng.uniform(size=raw.shape)) / 17.0
    x = (x - x.mean(0)) / x.std(0)
    order = rng.permutation(x.shape[0])[:n]
    return _tensor(x[order]), torch.from_numpy(bunch.target[order].astype(np.int64))
