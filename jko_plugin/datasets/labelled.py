r"""Labelled datasets for conditional flows: points with their class, and the exact ``log p(x | class)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._common import Seed
from .images import digits_labelled
from .registry import _GMM_NAME, benchmark_mixture
from .toys import eight_gaussians_labelled, eight_gaussians_log_prob, moons_log_prob, two_moons_labelled

__all__ = ["LABELLED_DATASETS", "LabelledDataset", "conditional_log_prob", "get_labelled", "load_labelled"]


@dataclass(frozen=True)
class LabelledDataset:
    """A dataset whose points come with a class label, and where known ``log p(x | label)``.

    Attributes:
        name: Registry name (the unlabelled version is ``get_dataset(name)``).
        dim: Dimension ``d``.
        num_classes: Labels lie in ``[0, num_classes)``.
        sample: ``sample(n, *, seed) -> (x (n, d) float32, labels (n,) int64)``; the points are
            those of the unlabelled dataset with the same seed.
        conditional_log_prob: Exact ``(x, labels) -> log p(x | label)`` ``(n,)``, or ``None``.
        size: Number of distinct points available (``None``: unlimited).
        posterior: ``x -> p(label | x)`` ``(n, num_classes)``, the Bayes classifier, where known.
    """

    name: str
    dim: int
    num_classes: int
    sample: Callable[..., tuple[Tensor, Tensor]]
    conditional_log_prob: Callable[[Tensor, Tensor], Tensor] | None = None
    size: int | None = None
    posterior: Callable[[Tensor], Tensor] | None = None


def _std_moons(n: int, *, seed: Seed) -> tuple[Tensor, Tensor]:
    return two_moons_labelled(n, seed=seed, noise=0.05, standardize=True)


def _moons_posterior(x: Tensor) -> Tensor:
    both = [moons_log_prob(x.double(), moon=torch.full((x.shape[0],), k)) for k in (0, 1)]
    return torch.softmax(torch.stack(both, dim=1), dim=1)  # equal priors


def _eight_posterior(x: Tensor) -> Tensor:
    both = [eight_gaussians_log_prob(x.double(), torch.full((x.shape[0],), k)) for k in range(8)]
    return torch.softmax(torch.stack(both, dim=1), dim=1)  # equal priors


#: Labelled datasets by name. ``gmm<d>`` (2 <= d <= 64) is ``get_dataset("gmm<d>")``'s mixture
#: with each point's component as its label (``num_classes`` 8).
LABELLED_DATASETS: dict[str, LabelledDataset] = {
    "moons": LabelledDataset(
        "moons", 2, 2, _std_moons, lambda x, y: moons_log_prob(x, moon=y), posterior=_moons_posterior
    ),
    "8gaussians": LabelledDataset(
        "8gaussians", 2, 8, eight_gaussians_labelled, eight_gaussians_log_prob, posterior=_eight_posterior
    ),
    "digits": LabelledDataset("digits", 64, 10, digits_labelled, None, 1797),
}


def get_labelled(name: str) -> LabelledDataset:
    """The ``LabelledDataset`` called ``name``: a key of ``LABELLED_DATASETS`` or ``gmm<d>``.

    Raises:
        ValueError: An unknown name (the message lists the choices).
    """
    if name in LABELLED_DATASETS:
        return LABELLED_DATASETS[name]
    match = _GMM_NAME.fullmatch(name) if isinstance(name, str) else None
    if match and 2 <= int(match.group(1)) <= 64:
        gmm = benchmark_mixture(int(match.group(1)))
        return LabelledDataset(
            name,
            gmm.dim,
            gmm.num_components,
            gmm.sample_labelled,
            gmm.conditional_log_prob,
            posterior=gmm.posterior,
        )
    choices = sorted(LABELLED_DATASETS) + ["gmm<d> (2 <= d <= 64)"]
    raise ValueError(f"labelled dataset must be one of {choices}, got {name!r}")


def load_labelled(name: str, n: int | None = None, *, seed: Seed) -> tuple[Tensor, Tensor]:
    """``n`` labelled points of ``name`` (see ``get_labelled``): ``(x, labels)``, float32 ``(n, d)``
    and int64 ``(n,)``. ``n=None`` takes every point of a fixed-size dataset (digits).

    Example:
        >>> x, y = load_labelled("gmm8", 1000, seed=0)
        >>> x.shape, int(y.max()) < 8
        (torch.Size([1000, 8]), True)
    """
    ds = get_labelled(name)
    if n is None:
        if ds.size is None:
            raise ValueError(f"{name} has no fixed size: give n")
        n = ds.size
    return ds.sample(n, seed=seed)


def conditional_log_prob(name: str, x: Tensor, labels: Tensor) -> Tensor:
    """Exact ``log p(x | label)`` of the labelled dataset ``name``, shape ``(n,)``.

    Raises:
        ValueError: The dataset's conditional density is not known (digits), or bad labels.
    """
    ds = get_labelled(name)
    if ds.conditional_log_prob is None:
        raise ValueError(f"the conditional density of {name} is not known")
    return ds.conditional_log_prob(x, labels)
