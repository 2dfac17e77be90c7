r"""Mixtures of full-covariance Gaussians in ``R^d`` with exact sampling and log-density."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._validate import positive_int
from ._common import Seed, _rng

__all__ = ["GaussianMixture"]


def _kmeans(y: Tensor, k: int, gen: torch.Generator, rounds: int = 50) -> tuple[Tensor, float]:
    """``k`` centres of ``y``'s rows and their inertia (the sum of squared distances to the nearest):
    k-means++ seeding (each new centre drawn in proportion to its squared distance from the chosen
    ones), then Lloyd's rounds."""
    centres = y[torch.randint(len(y), (1,), generator=gen)]
    for _ in range(k - 1):
        dist = torch.cdist(y, centres).amin(1).square()
        centres = torch.cat([centres, y[torch.multinomial(dist / dist.sum(), 1, generator=gen)]])
    for _ in range(rounds):
        one_hot = torch.nn.functional.one_hot(torch.cdist(y, centres).argmin(1), k).to(y.dtype)
        counts = one_hot.sum(0)
        moved = torch.where(counts[:, None] > 0, (one_hot.T @ y) / counts.clamp_min(1)[:, None], centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres, float(torch.cdist(y, centres).amin(1).square().sum())


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

    @classmethod
    def fit(
        cls,
        x: Tensor,
        n_components: int,
        *,
        seed: int = 0,
        iterations: int = 40,
        restarts: int = 4,
        tol: float = 1e-5,
        reg: float = 1e-4,
    ) -> GaussianMixture:
        """The maximum-likelihood mixture of ``n_components`` full-covariance Gaussians fitted to
        the rows of ``x`` by expectation-maximisation, started from the best (least inertia) of
        ``restarts`` k-means clusterings (k-means++ centres drawn from ``seed``), until the mean
        log-likelihood gains less than ``tol`` (at most ``iterations`` rounds);
        ``reg`` is added to every covariance's diagonal, so that no component collapses.

        Raises:
            ValueError: ``x`` not a finite ``(n, d)`` array with at least ``n_components`` rows.

        >>> truth = GaussianMixture.random(2, 3, seed=0)
        >>> fitted = GaussianMixture.fit(truth.sample(3000, seed=1), 3, seed=0)
        >>> x = truth.sample(2000, seed=2)
        >>> bool(abs(float(fitted.log_prob(x).mean() - truth.log_prob(x).mean())) < 0.02)
        True
        """
        k = positive_int("n_components", n_components)
        y = torch.as_tensor(x).detach().to(torch.float64).cpu()
        if y.dim() != 2 or y.shape[0] < k or not bool(torch.isfinite(y).all()):
            raise ValueError(
                f"x must be finite with shape (n, d) and n >= {k} rows, got shape {tuple(y.shape)}"
            )
        gen = torch.Generator().manual_seed(seed)
        runs = [_kmeans(y, k, gen) for _ in range(restarts)]
        return cls._em(y, min(runs, key=lambda run: run[1])[0], iterations, tol, reg)

    @classmethod
    def _em(cls, y: Tensor, centres: Tensor, iterations: int, tol: float, reg: float) -> GaussianMixture:
        """EM from the hard clusters of the nearest ``centres``."""
        k, d = centres.shape
        resp = torch.nn.functional.one_hot(torch.cdist(y, centres).argmin(1), k).to(y.dtype)
        eye = torch.eye(d, dtype=y.dtype)
        last = -math.inf
        for _ in range(iterations):
            counts = resp.sum(0) + 1e-10
            means = (resp.T @ y) / counts[:, None]
            diff = y.unsqueeze(1) - means  # (n, k, d)
            covs = torch.einsum("nk,nki,nkj->kij", resp, diff, diff) / counts[:, None, None] + reg * eye
            gmm = cls(means, torch.linalg.cholesky(covs), counts)
            joint = gmm.component_log_prob(y) + torch.log(gmm.weights)
            log_lik = float(torch.logsumexp(joint, 1).mean())
            resp = torch.softmax(joint, 1)
            if log_lik - last < tol:
                break
            last = log_lik
        return gmm

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
        # One inverse per component and a matmul: a batched solve per (point, component) pair made
        # fit 3-7x slower at n = 16,000, d = 16 (float64 keeps the inverse exact enough).
        eye = torch.eye(self.dim, dtype=torch.float64).expand_as(self.scale_trils)
        inverse = torch.linalg.solve_triangular(self.scale_trils, eye, upper=False)
        sol = torch.einsum("kij,nkj->nki", inverse, y.unsqueeze(1) - self.means)
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
