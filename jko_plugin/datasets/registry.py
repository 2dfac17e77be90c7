r"""Datasets by name: the ``Dataset`` record, the ``DATASETS`` table and ``get_dataset``/``load_dataset``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from ._common import Seed
from .images import digits
from .mixture import GaussianMixture
from .pixels import rose, rose_log_prob, tree, tree_log_prob
from .toys import (
    checkerboard,
    checkerboard_log_prob,
    circles,
    eight_gaussians,
    eight_gaussians_log_prob,
    moons_log_prob,
    pinwheel,
    two_moons,
    two_spirals,
)

__all__ = ["DATASETS", "DEFAULT_TRAIN_SIZE", "Dataset", "benchmark_mixture", "get_dataset", "load_dataset"]

#: Training points a benchmark draws from a generated dataset unless the dataset says otherwise.
DEFAULT_TRAIN_SIZE = 20000

#: JKO-iFlow's training set for its pictures (``ntr`` in its ``configs/JKO_rose.yaml`` and
#: ``JKO_tree.yaml``). With 20,000 points a picture's fine detail is not in the data: a 64-bin
#: spline flow scores 2.616 on rose at 300 s against 2.565 with 500,000 (BENCHMARKS.md s.4.0).
PICTURE_TRAIN_SIZE = 500_000


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``sample(n, seed=...)`` and, when known, the exact ``log_prob``.

    Where the density is known in closed form (two-moons by quadrature, 8 gaussians, checkerboard,
    Gaussian mixtures, JKO-iFlow's pixel mixtures rose and tree) the dataset carries its exact
    ``log_prob``, so the true test NLL, the limit no model can beat on average, is known.

    Attributes:
        name: Registry name.
        dim: Dimension ``d``.
        sample: ``sample(n, *, seed) -> Tensor (n, d)``.
        log_prob: Exact log-density ``(n, d) -> (n,)``, or ``None`` when unknown.
        size: Number of distinct points available (``None``: unlimited).
        train_size: Training points ``jko-flow compare`` draws by default (generated data only):
            ``DEFAULT_TRAIN_SIZE``, or the size its benchmark's authors trained on (rose, tree).
    """

    name: str
    dim: int
    sample: Callable[..., Tensor]
    log_prob: Callable[[Tensor], Tensor] | None = None
    size: int | None = None
    train_size: int = DEFAULT_TRAIN_SIZE


def _std_moons(n: int, *, seed: Seed) -> Tensor:
    return two_moons(n, seed=seed, noise=0.05, standardize=True)


#: Fixed datasets by name. ``gmm<d>`` (2 <= d <= 64) names the 8-component ``GaussianMixture.random(d)``.
DATASETS: dict[str, Dataset] = {
    "moons": Dataset("moons", 2, _std_moons, moons_log_prob),
    "circles": Dataset("circles", 2, circles),
    "8gaussians": Dataset("8gaussians", 2, eight_gaussians, eight_gaussians_log_prob),
    "checkerboard": Dataset("checkerboard", 2, checkerboard, checkerboard_log_prob),
    "pinwheel": Dataset("pinwheel", 2, pinwheel),
    "2spirals": Dataset("2spirals", 2, two_spirals),
    "digits": Dataset("digits", 64, digits, None, 1797),
    "rose": Dataset("rose", 2, rose, rose_log_prob, train_size=PICTURE_TRAIN_SIZE),
    "tree": Dataset("tree", 2, tree, tree_log_prob, train_size=PICTURE_TRAIN_SIZE),
}
_GMM_NAME = re.compile(r"gmm(\d+)")


def get_dataset(name: str) -> Dataset:
    """The ``Dataset`` called ``name``: a key of ``DATASETS`` or ``gmm<d>`` with 2 <= d <= 64.

    ``"moons"`` is standardised two-moons with noise 0.05, the benchmark's version; ``"rose"`` and
    ``"tree"`` are JKO-iFlow's pictures in its own coordinates (``[-4, 4]^2``, not standardised).

    >>> get_dataset("rose").train_size, get_dataset("moons").train_size
    (500000, 20000)
    """
    if name in DATASETS:
        return DATASETS[name]
    match = _GMM_NAME.fullmatch(name) if isinstance(name, str) else None
    if match and 2 <= int(match.group(1)) <= 64:
        gmm = benchmark_mixture(int(match.group(1)))
        return Dataset(name, gmm.dim, gmm.sample, gmm.log_prob)
    choices = sorted(DATASETS) + ["gmm<d> (2 <= d <= 64)"]
    raise ValueError(f"dataset must be one of {choices}, got {name!r}")


def benchmark_mixture(dim: int) -> GaussianMixture:
    """The mixture behind ``gmm<dim>``: ``GaussianMixture.random(dim, 8, seed=1000 + dim)``."""
    return GaussianMixture.random(dim, 8, seed=1000 + dim)


def load_dataset(name: str, n: int, *, seed: Seed) -> Tensor:
    """``n`` samples of the dataset ``name`` (see ``get_dataset``), float32 ``(n, d)``."""
    return get_dataset(name).sample(n, seed=seed)
