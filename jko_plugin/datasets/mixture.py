r"""Mixtures of full-covariance Gaussians in ``R^d`` with exact sampling and log-density."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._validate import positive_int
from ._common import Seed, _rng

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``R^d`` with exact sampling and log-density.

    Args:
        means: Component means, shape ``(k, d)``.
        scale_trils: Lower-triangular Cholesky factors of the covariances, shape ``(k, d, d)``.
        weights: Mixture weights, shape ``(k,)``, positive (normalised here).

    Example:
        >>> gmm = GaussianMixture.random(16, 8, seed=0)
        >>> x = gmm.sample(1000, seed=1)
        >>> true_nll = float(-gmm.log_prob(x).mean())
    """

    def __init__(self, means: Tensor, scale_trils: Tensor, weights: Tensor) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        scale_trils = torch.as_tensor(scale_trils, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (k, d), got {tuple(means.shape)}")
        k, d = means.shape
        if scale_trils.shape != (k, d, d):
            raise ValueError(f"scale_trils must have shape {(k, d, d)}, got {tuple(scale_trils.shape)}")
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {weights.tolist()}")
        diag = torch.diagonal(scale_trils, dim1=-2, dim2=-1)
        if not bool((diag > 0).all()):
            raise ValueError("scale_trils must have positive diagonals")
        self.means = means
        self.scale_trils = torch.tril(scale_trils)
        self.weights = weights / weights.sum()
        self.dim = d

    @classmethod
    def random(
        cls, dim: int, n_components: int = 8, *, seed: int = 0, separation: float = 5.0
    ) -> GaussianMixture:
        """A random mixture: means ``N(0, s^2 I)`` with ``s = separation / sqrt(2 dim)`` (so two means
        lie about ``separation`` apart), randomly rotated covariances with standard deviations
        uniform on [0.3, 1], and weights proportional to uniform [0.5, 1.5] numbers."""
        positive_int("dim", dim)
        positive_int("n_components", n_components)
        rng = np.random.default_rng(seed)
        means = rng.standard_normal((n_components, dim)) * separation / math.sqrt(2 * dim)
        trils = []
        for _ in range(n_components):
            q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
            q = q * np.sign(np.diag(r))
            cov = (q * rng.uniform(0.3, 1.0, size=dim) ** 2) @ q.T
            trils.append(np.linalg.cholesky((cov + cov.T) / 2))
        weights = rng.uniform(0.5, 1.5, size=n_components)
        return cls(torch.from_numpy(means), torch.from_numpy(np.stack(trils)), torch.from_numpy(weights))

    @property
    def mean(self) -> Tensor:
        """The mixture's exact mean ``sum_k w_k mu_k``, float64 ``(d,)``."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        """The mixture's exact covariance ``sum_k w_k (S_k + mu_k mu_k^T) - mu mu^T``, float64 ``(d, d)``."""
        centred = self.means - self.mean
        within = torch.einsum("k,kij,klj->il", self.weights, self.scale_trils, self.scale_trils)
        return within + (centred * self.weights[:, None]).T @ centred

    @property
    def num_components(self) -> int:
        """Number of components ``k``."""
        return len(self.weights)

    def sample(self, n: int, *, seed: Seed) -> Tensor:
        """``n`` i.i.d. samples, float32 of shape ``(n, d)``."""
        return self.sample_labelled(n, seed=seed)[0]

    def sample_labelled(self, n: int, *, seed: Seed) -> tuple[Tensor, Tensor]:
        """``sample`` (the same points for the same seed) with each point's component as its label:
        ``(x, labels)``, float32 ``(n, d)`` and int64 ``(n,)``."""
        positive_int("n", n)
        rng = _rng(seed)
        idx = rng.choice(len(self.weights), size=n, p=self.weights.numpy())
        eps = torch.from_numpy(rng.standard_normal((n, self.dim)))
        x = self.means[idx] + (self.scale_trils[idx] @ eps.unsqueeze(-1)).squeeze(-1)
        return x.to(torch.float32), torch.from_numpy(idx.astype(np.int64))

    def component_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; mu_j, S_j)`` for every component ``j`` (float64), shape ``(n, k)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        y = x.detach().to(torch.float64).cpu()
        diff = (y.unsqueeze(1) - self.means).unsqueeze(-1)  # (n, k, d, 1)
        sol = torch.linalg.solve_triangular(self.scale_trils, diff, upper=False).squeeze(-1)
        log_det = torch.log(torch.diagonal(self.scale_trils, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * sol.square().sum(-1) - log_det - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` (computed in float64), shape ``(n,)`` in ``x``'s dtype."""
        log_p = torch.logsumexp(self.component_log_prob(x) + torch.log(self.weights), dim=1)
        return log_p.to(dtype=x.dtype, device=x.device)

    def conditional_log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """Exact ``log p(x | component = labels)``, shape ``(n,)`` in ``x``'s dtype.

        Raises:
            ValueError: ``labels`` not one component index per row.
        """
        if labels.shape != (x.shape[0],) or bool(((labels < 0) | (labels >= self.num_components)).any()):
            raise ValueError(f"labels must hold one component in [0, {self.num_components}) per row of x")
        comp = self.component_log_prob(x).gather(1, labels.detach().cpu().long().unsqueeze(1)).squeeze(1)
        return comp.to(dtype=x.dtype, device=x.device)

    def posterior(self, x: Tensor) -> Tensor:
        """The components' posterior probabilities ``p(j | x)`` (float64), shape ``(n, k)``: its
        ``argmax`` is the Bayes-optimal assignment of each point to a component."""
        return torch.softmax(self.component_log_prob(x) + torch.log(self.weights), dim=1)
