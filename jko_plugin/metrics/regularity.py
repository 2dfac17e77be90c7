r"""Regularity and stability of a generative flow: the quantities Gaussian-interpolation-flow theory bounds.

Gao, Huang and Jiao (arXiv:2311.11475) prove the velocity field of a Gaussian interpolation flow
Lipschitz in ``x`` along the path and the flow stable in W2 under perturbations of its input.
Two measurements of a trained model:

- ``lipschitz_profile``: at each time of a grid, the largest singular value ``||dv/dx||_2`` of
  the velocity's Jacobian (exact, by autograd) at the model's own sample paths, max and mean over
  the points. Times and Jacobians are in normalised time ``tau = t / T`` (the field
  ``dx/dtau = T v``), so flows on different time axes (flow matching's ``[0, 1]``, a JKO flow's
  ``[0, T_N]``) compare; 0 is data, 1 noise. The max over finitely many points is a lower
  estimate of the Lipschitz constant on the support. A piecewise field (JKO blocks) also gets
  the max per piece (block).
- ``latent_stability``: generate from latents ``z`` and from ``z + delta e`` (a translation
  along a unit direction ``e``, so that ``W2(law z, law z + delta e) = delta`` exactly), then
  report the exact empirical ``W2`` between the two sample sets (an assignment problem, solved
  exactly: Sinkhorn's blur would smear displacements this small) divided by ``delta`` (the flow's W2 stability
  constant in that direction, empirically; at most its Lipschitz constant) and the RMS of the
  paired displacements divided by ``delta`` (the coupling's bound of the same), averaged over a
  few random directions. ``block_stability`` does the same for each piece of a field alone (a
  JKO flow's blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._validate import as_points, positive, positive_int
from ..sampling.field import VelocityField

__all__ = ["LipschitzProfile", "Stability", "block_stability", "latent_stability", "lipschitz_profile"]


@dataclass
class LipschitzProfile:
    """``||dv/dx||_2`` along a flow's paths, in normalised time (0 data, 1 noise).

    Attributes:
        times: Normalised times, decreasing from 1 (noise) to 0 (data).
        max: Largest spectral norm over the points at each time (the Lipschitz estimate).
        mean: Mean spectral norm at each time.
        per_piece: Max over the times inside each piece (one per JKO block, data side first).
    """

    times: list[float]
    max: list[float]
    mean: list[float]
    per_piece: list[float] = field(default_factory=list)

    @property
    def lipschitz(self) -> float:
        """The largest estimate along the path."""
        return max(self.max)

    def to_dict(self) -> dict:
        return {"times": self.times, "max": self.max, "mean": self.mean, "per_piece": self.per_piece}


def _spectral_norms(field: VelocityField, x: Tensor, t: float, piece: int) -> Tensor:
    """``||dv/dx (x_i, t)||_2`` per row, from ``d`` batched vector-Jacobian products."""
    d = x.shape[1]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = field(x, t, piece=piece)
        eye = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, *x.shape)
        (rows,) = torch.autograd.grad(v, x, grad_outputs=eye, is_grads_batched=True)  # (d, n, d)
    return torch.linalg.matrix_norm(rows.transpose(0, 1).detach(), ord=2)


def lipschitz_profile(
    model: object,
    latents: Tensor,
    *,
    num_times: int = 32,
    steps: int = 64,
) -> LipschitzProfile:
    """The Lipschitz estimate of ``model``'s velocity along its sample paths.

    Args:
        model: What ``VelocityField.from_model`` takes (flow-matching model, JKO flow of ODE
            blocks, velocity field).
        latents: Starting points at the noise end, ``(n, d)``.
        num_times: Equal grid intervals over the path (piece boundaries are added; a boundary
            ``T_k`` is evaluated as the data-side end of the piece above it, ``T`` in the last).
        steps: RK4 steps over the path for the sample paths.

    Returns:
        ``LipschitzProfile``.

    Example:
        >>> A = torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)  # ||A||_2 = 2
        >>> prof = lipschitz_profile(VelocityField([(0.0, 1.0, lambda x, t: x @ A.T)], dim=2),
        ...                          torch.randn(8, 2, dtype=torch.float64), num_times=2)
        >>> round(prof.lipschitz, 12)
        2.0
    """
    vf = VelocityField.from_model(model)
    z = as_points(latents, "latents", dim=vf.dim)
    times = vf.grid(positive_int("num_times", num_times))
    states = vf.trajectory(z, times, steps=steps)
    T = vf.total_time
    out = LipschitzProfile([], [], [])
    best = [0.0] * vf.num_pieces
    for i, (t, x) in enumerate(zip(times, states)):
        # A boundary time is the noise-side end of the piece below it and is evaluated there.
        piece = vf.piece_of(t) if i == 0 else vf.piece_of(0.5 * (t + times[i - 1]))
        norms = T * _spectral_norms(vf, x, t, piece)
        out.times.append(t / T)
        out.max.append(float(norms.max()))
        out.mean.append(float(norms.mean()))
        best[piece] = max(best[piece], float(norms.max()))
    out.per_piece = best
    return out


@dataclass
class Stability:
    """W2 stability of a generator under latent translations of size ``delta``.

    Attributes:
        delta: The translation's length.
        w2_ratio: ``W2(G(z), G(z + delta e)) / delta`` (exact W2 of the two empirical
            measures), mean over the directions ``e``.
        w2_ratio_max: The same, largest over the directions.
        rms_ratio: ``sqrt(mean |G(z) - G(z + delta e)|^2) / delta`` (a coupling: an upper bound
            of ``w2_ratio``), mean over the directions.
    """

    delta: float
    w2_ratio: float
    w2_ratio_max: float
    rms_ratio: float

    def to_dict(self) -> dict:
        return {
            "delta": self.delta,
            "w2_ratio": self.w2_ratio,
            "w2_ratio_max": self.w2_ratio_max,
            "rms_ratio": self.rms_ratio,
        }


def _assignment_w2(a: Tensor, b: Tensor) -> float:
    """Exact W2 between two uniform samples of equal size: an optimal plan is a permutation
    (Birkhoff), found by scipy's assignment solver (about 0.1 s for 1,000 points)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(a.double(), b.double()).square().cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean()) ** 0.5


@torch.no_grad()
def latent_stability(
    generate: Callable[[Tensor], Tensor],
    latents: Tensor,
    *,
    delta: float = 0.1,
    directions: int = 4,
    generator: torch.Generator | None = None,
) -> Stability:
    """How far the generated distribution moves when the latent distribution moves by ``delta``.

    Args:
        generate: Latents ``(n, d)`` to samples ``(n, d')`` (a sampler with its own solver).
        latents: ``z``, shape ``(n, d)``.
        delta: Length of the translation ``z + delta e``.
        directions: Random unit directions ``e`` (from ``generator``).
        generator: Draws the directions.

    Returns:
        ``Stability``.

    Example:
        >>> z = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> s = latent_stability(lambda z: 3 * z, z, delta=0.05)
        >>> round(s.w2_ratio, 9), round(s.rms_ratio, 9)  # the map 3 I stretches every direction by 3
        (3.0, 3.0)
    """
    z = as_points(latents, "latents")
    delta = positive("delta", delta)
    base = generate(z)
    w2, rms = [], []
    for _ in range(positive_int("directions", directions)):
        e = torch.randn(z.shape[1], generator=generator, dtype=torch.float64).to(z)
        moved = generate(z + delta * e / e.norm())
        w2.append(_assignment_w2(base, moved) / delta)
        rms.append(float((moved - base).square().sum(-1).mean().sqrt()) / delta)
    return Stability(delta, sum(w2) / len(w2), max(w2), sum(rms) / len(rms))


@torch.no_grad()
def block_stability(
    model: object,
    latents: Tensor,
    *,
    delta: float = 0.1,
    steps: int = 64,
    generator: torch.Generator | None = None,
) -> list[Stability]:
    """``latent_stability`` of each piece's own map (a JKO flow's blocks), data side first: the
    inputs of piece k are the states at its noise end ``T_k`` of the paths started at ``latents``.

    Raises:
        ValueError: What ``VelocityField.from_model`` or ``latent_stability`` raise.
    """
    vf = VelocityField.from_model(model)
    z = as_points(latents, "latents", dim=vf.dim)
    bounds = vf.boundaries
    states = vf.trajectory(z, list(reversed(bounds)), steps=steps)  # at T_N, ..., T_0
    out = []
    for k in range(vf.num_pieces):
        x_in = states[vf.num_pieces - 1 - k]  # at T_{k+1}, the noise end of piece k

        def through(x: Tensor, k: int = k) -> Tensor:
            return vf.transport(x, bounds[k + 1], bounds[k], steps=steps)

        out.append(latent_stability(through, x_in, delta=delta, generator=generator))
    return out
