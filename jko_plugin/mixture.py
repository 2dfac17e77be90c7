r"""A mixture of conditional flows: ``p(x) = sum_k w_k q(x | k)`` over the data's clusters.

A flow maps the data onto one Gaussian, so well-separated modes make it stretch space between
them; a JKO flow conditional on the cluster (``num_classes``) maps each cluster onto the Gaussian
on its own. The clusters are a Gaussian mixture's (``GaussianMixture.fit``), their number the one
whose mixture scores best on held-out rows (``choose_clusters``); each point takes its most
probable cluster (``cluster_labels``), and ``w_k`` is the share of training points in cluster
``k``; each cluster is standardised on its own (``cluster_moments``), as the data is as a whole.
``find_clusters`` does all of this. ``ClusterMixtureFlow`` is the resulting density: exact (each
``q(. | k)`` is a normalised flow density and the weights sum to 1), sampled by drawing ``k`` and
then ``x ~ q(. | k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._validate import positive_int
from .adapters.normflows_baselines import base_latents
from .datasets.mixture import GaussianMixture

__all__ = [
    "DEFAULT_CLUSTER_COUNTS",
    "ClusterMixtureFlow",
    "Clusters",
    "choose_clusters",
    "cluster_labels",
    "cluster_moments",
    "find_clusters",
]

#: The cluster counts ``choose_clusters`` tries by default.
DEFAULT_CLUSTER_COUNTS = (1, 2, 4, 8, 16)


def choose_clusters(
    x: Tensor, x_sel: Tensor, counts: Sequence[int] = DEFAULT_CLUSTER_COUNTS, *, seed: int = 0
) -> tuple[GaussianMixture, dict[int, float]]:
    """The Gaussian mixture fitted to ``x`` whose number of components (among ``counts``: 1 and
    those with at most one per 50 rows of ``x``) gives the lowest NLL on the held-out rows ``x_sel``,
    and every count's held-out NLL.

    Raises:
        ValueError: ``counts`` empty or not positive integers, or none of them small enough.

    >>> truth = GaussianMixture.random(2, 4, seed=0)
    >>> gmm, scores = choose_clusters(truth.sample(4000, seed=1), truth.sample(1000, seed=2))
    >>> gmm.num_components, sorted(scores)
    (4, [1, 2, 4, 8, 16])
    """
    counts = sorted({positive_int("cluster count", k) for k in counts})
    if not counts:
        raise ValueError("cluster counts must name at least one count, got none")
    usable = [k for k in counts if k == 1 or 50 * k <= len(x)]
    if not usable:
        raise ValueError(f"cluster counts {counts} need at least {50 * counts[0]} rows, got {len(x)}")
    fitted = {k: GaussianMixture.fit(x, k, seed=seed) for k in usable}
    scores = {k: float(-gmm.log_prob(x_sel.detach().cpu()).mean()) for k, gmm in fitted.items()}
    return fitted[min(scores, key=scores.get)], scores


def cluster_labels(gmm: GaussianMixture, *xs: Tensor) -> tuple[list[Tensor], int]:
    """Each row's most probable component under ``gmm``, renumbered ``0 .. K - 1`` over the
    components that hold a row of the first array (``K`` returned); the other arrays' rows in an
    emptied component take their most probable kept one. Labels are int64 on each array's device.

    >>> gmm = GaussianMixture.random(2, 3, seed=0)
    >>> (labels,), k = cluster_labels(gmm, gmm.sample(500, seed=1))
    >>> k, labels.dtype
    (3, torch.int64)
    """
    posterior = [gmm.posterior(x) for x in xs]
    kept = torch.unique(posterior[0].argmax(1))
    labels = [p[:, kept].argmax(1).to(x.device) for p, x in zip(posterior, xs, strict=True)]
    return labels, len(kept)


def cluster_moments(x: Tensor, labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """Each cluster's column means and standard deviations, shapes ``(K, d)`` (a deviation below
    1e-6 of the data's largest, as of a cluster of one point, is set to 1).

    >>> loc, scale = cluster_moments(torch.tensor([[0.0], [2.0], [5.0]]), torch.tensor([0, 0, 1]), 2)
    >>> loc.flatten().tolist(), scale.flatten().tolist()
    ([1.0, 5.0], [1.0, 1.0])
    """
    one_hot = torch.nn.functional.one_hot(labels.long(), num_clusters).to(x.dtype)
    counts = one_hot.sum(0).clamp_min(1)[:, None]
    loc = one_hot.T @ x / counts
    scale = (one_hot.T @ x.square() / counts - loc.square()).clamp_min(0).sqrt()
    scale = torch.where(scale > 1e-6 * float(x.std(0).max()), scale, torch.ones_like(scale))
    return loc, scale


class ClusterMixtureFlow(nn.Module):
    r"""``p(x) = sum_k w_k q(x | k)``: a flow conditional on class labels (a normflows
    ``ConditionalNormalizingFlow`` or a JKO flow built with ``num_classes``) and the clusters'
    weights, ``w_k`` the share of ``labels`` equal to ``k``.

    Args:
        flow: The conditional flow; ``flow.log_prob(x, c)`` and ``flow.forward(z, context=c)``
            with a ``DiagGaussian`` base ``flow.q0``.
        labels: The training points' clusters, int64 in ``[0, num_clusters)``.
        num_clusters: ``K``, every cluster holding at least one label.
        loc, scale: Each cluster's affine standardisation, ``(K, d)`` (``cluster_moments``): the
            flow models ``(x - loc_k) / scale_k`` given ``k``; none by default.
    """

    def __init__(
        self,
        flow: nn.Module,
        labels: Tensor,
        num_clusters: int,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        num_clusters = positive_int("num_clusters", num_clusters)
        counts = torch.bincount(labels.detach().cpu().long(), minlength=num_clusters)
        if len(counts) != num_clusters or bool((counts == 0).any()):
            raise ValueError(
                f"labels must fill every cluster 0 .. {num_clusters - 1}, got counts {counts.tolist()}"
            )
        self.flow = flow
        log_weights = torch.log(counts.double() / counts.sum()).float().to(labels.device)
        self.register_buffer("log_weights", log_weights)
        dim = flow.q0.shape[0]
        loc = torch.zeros(num_clusters, dim) if loc is None else loc.detach().float()
        scale = torch.ones(num_clusters, dim) if scale is None else scale.detach().float()
        if (
            loc.shape != (num_clusters, dim)
            or scale.shape != (num_clusters, dim)
            or not bool((scale > 0).all())
        ):
            raise ValueError(f"loc and scale must have shape {(num_clusters, dim)}, scale positive")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    @property
    def num_clusters(self) -> int:
        """``K``, the number of clusters."""
        return len(self.log_weights)

    def cluster_log_prob(self, x: Tensor) -> Tensor:
        """``log w_k + log q(x | k)`` for every cluster, shape ``(n, K)``."""
        rows = []
        for k in range(self.num_clusters):
            c = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
            z = (x - self.loc[k]) / self.scale[k]
            rows.append(self.flow.log_prob(z, c) - self.scale[k].log().sum() + self.log_weights[k])
        return torch.stack(rows, dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)``, shape ``(n,)``."""
        return torch.logsumexp(self.cluster_log_prob(x), dim=1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples and their clusters: ``k ~ w``, then ``x = flow(z, k)``, ``z ~ q0``;
        reproducible from ``generator`` (a CPU generator gives the same draws on any device)."""
        where = generator.device if generator is not None else self.log_weights.device
        weights = self.log_weights.exp().to(where)
        c = torch.multinomial(weights, n, replacement=True, generator=generator).to(self.loc.device)
        z = self.flow.forward(base_latents(self.flow, n, generator=generator), context=c)
        return self.loc[c] + self.scale[c] * z, c


@dataclass
class Clusters:
    """The training and selection rows' clusters (``find_clusters``): their labels, ``K``, each
    cluster's standardisation and every tried count's held-out NLL (``selection_nll``)."""

    labels: Tensor
    labels_sel: Tensor
    num_clusters: int
    loc: Tensor
    scale: Tensor
    selection_nll: dict[int, float]

    def standardized(self, x: Tensor, labels: Tensor) -> Tensor:
        """``(x - loc_c) / scale_c`` row by row, ``c`` the row's label: what the flow models."""
        return (x - self.loc[labels]) / self.scale[labels]

    def mixture(self, flow: nn.Module) -> ClusterMixtureFlow:
        """``p(x) = sum_k w_k q(x | k)`` with ``flow`` trained on the standardised rows."""
        return ClusterMixtureFlow(flow, self.labels, self.num_clusters, self.loc, self.scale)


def find_clusters(
    x: Tensor, x_sel: Tensor, counts: Sequence[int] = DEFAULT_CLUSTER_COUNTS, *, seed: int = 0
) -> Clusters:
    """``choose_clusters``, ``cluster_labels`` and ``cluster_moments`` in one: ``x``'s clusters
    for a conditional flow, ``x_sel``'s (held-out rows, for the count and the flow's choices) too.

    >>> means = torch.tensor([[0.0, 0.0], [9.0, 0.0]])
    >>> truth = GaussianMixture(means, torch.eye(2).expand(2, 2, 2), torch.ones(2))
    >>> clusters = find_clusters(truth.sample(3000, seed=1), truth.sample(500, seed=2), (1, 2))
    >>> clusters.num_clusters, sorted(clusters.loc[:, 0].round().abs().tolist())
    (2, [0.0, 9.0])
    """
    gmm, scores = choose_clusters(x, x_sel, counts, seed=seed)
    (labels, labels_sel), k = cluster_labels(gmm, x, x_sel)
    loc, scale = cluster_moments(x, labels, k)
    return Clusters(labels, labels_sel, k, loc, scale, scores)
