r"""Sampling and exact likelihood of any continuous flow ``dx/dsigma = v(x, sigma)`` on [0, 1].

Every continuous flow here uses one time axis, diffusers' flow-matching convention: ``sigma``
runs from 0 (data) to 1 (noise, ``N(0, I)``) and the velocity is ``dx/dsigma``.

Sampling integrates ``z ~ N(0, I)`` from ``sigma = 1`` to 0; the log-likelihood integrates
``x`` from 0 to 1 with ``log p(x) = log N(x_1; 0, I) + int_0^1 div v(x_sigma, sigma) dsigma``
(the instantaneous change of variables), with the exact divergence (one batched
vector-Jacobian product per evaluation, fine for small ``d``) or Hutchinson's estimator.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._ops import SOLVERS, integrate, standard_normal_log_prob
from .._validate import choice, positive_int

__all__ = ["exact_divergence", "hutchinson_divergence", "ode_log_prob", "sample_ode"]

#: ``velocity(x, sigma) -> dx/dsigma`` with ``sigma`` a float.
Velocity = Callable[[Tensor, float], Tensor]
#: ``velocity_and_divergence(x, sigma) -> (dx/dsigma, div)``, shapes ``(batch, d)`` and ``(batch,)``.
VelocityWithDivergence = Callable[[Tensor, float], tuple[Tensor, Tensor]]


def sample_ode(
    velocity: Velocity,
    latents: Tensor,
    *,
    steps: int = 32,
    solver: str = "euler",
) -> Tensor:
    """Push ``latents`` (noise, ``sigma = 1``) to data (``sigma = 0``) with ``steps`` fixed solver steps.

    Args:
        velocity: ``v(x, sigma) -> dx/dsigma``.
        latents: Shape ``(n, d)``.
        steps: Solver steps over [0, 1].
        solver: ``"euler"``, ``"heun"`` or ``"rk4"``; NFE per sample is ``solver_nfe(steps, solver)``.

    Returns:
        Samples of shape ``(n, d)``.
    """
    positive_int("steps", steps)
    tableau = SOLVERS[choice("solver", solver, SOLVERS)]
    with torch.no_grad():
        x, _ = integrate(lambda x, s: (velocity(x, s), ()), latents, 1.0, 0.0, steps, tableau, 0)
    return x


def exact_divergence(
    velocity: Velocity, x: Tensor, sigma: float, *, loop: bool = False
) -> tuple[Tensor, Tensor]:
    """``(v, div v)`` by autograd: all ``d`` Jacobian rows from one batched vector-Jacobian
    product (``is_grads_batched``), or with ``loop=True`` one backward pass per dimension (for
    models that ``torch.vmap`` cannot batch)."""
    d = x.shape[1]
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, sigma)
        if loop:
            div = x.new_zeros(x.shape[0])
            for i in range(d):
                (g,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=i < d - 1)
                div = div + g[:, i]
        else:
            eye = torch.eye(d, dtype=x.dtype, device=x.device).unsqueeze(1).expand(d, *x.shape)
            (g,) = torch.autograd.grad(v, x, grad_outputs=eye, is_grads_batched=True)
            div = torch.diagonal(g, dim1=0, dim2=2).sum(-1)
    return v.detach(), div.detach()


def hutchinson_divergence(
    velocity: Velocity, x: Tensor, sigma: float, probes: Tensor
) -> tuple[Tensor, Tensor]:
    """``(v, estimate of div v)`` from probes ``(k, batch, d)``: ``mean_k probe^T (dv/dx) probe``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, sigma)
        (g,) = torch.autograd.grad(v, x, grad_outputs=probes, is_grads_batched=True)
    return v.detach(), (g * probes).sum(-1).mean(0).detach()


def ode_log_prob(
    velocity_and_divergence: VelocityWithDivergence,
    x: Tensor,
    *,
    steps: int = 64,
    solver: str = "rk4",
    chunk_size: int = 4096,
) -> Tensor:
    """Exact-ODE log-likelihood ``log p(x)`` of a continuous flow with latent ``N(0, I)`` at ``sigma = 1``.

    Integrates ``x`` and ``int div v dsigma`` from ``sigma = 0`` to 1 with ``steps`` fixed steps.
    With RK4 and smooth fields the error falls as ``steps^-4``; 64 RK4 steps are within 1e-4 nats
    of the closed form on Gaussian paths (tested).

    Args:
        velocity_and_divergence: ``f(x, sigma) -> (dx/dsigma, div)``.
        x: Data, shape ``(n, d)``.
        steps: Solver steps over [0, 1].
        solver: ``"euler"``, ``"heun"`` or ``"rk4"``.
        chunk_size: Rows integrated at once (bounds memory).

    Returns:
        ``log p(x)``, shape ``(n,)``.
    """
    positive_int("steps", steps)
    tableau = SOLVERS[choice("solver", solver, SOLVERS)]

    def func(y: Tensor, s: float) -> tuple[Tensor, tuple[Tensor, ...]]:
        v, div = velocity_and_divergence(y, s)
        return v, (div,)

    out = []
    with torch.no_grad():
        for chunk in x.split(chunk_size):
            z, (int_div,) = integrate(func, chunk, 0.0, 1.0, steps, tableau, 1)
            out.append(standard_normal_log_prob(z) + int_div)
    return torch.cat(out)
