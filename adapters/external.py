r"""Evaluate any velocity model ``v(x, t)`` (torchcfm, Meta's ``flow_matching``, your own) with our metrics.

Internally every continuous flow here uses one time axis, diffusers' flow-matching convention:
``sigma`` runs from 0 (data) to 1 (noise, ``N(0, I)``) and the velocity is ``dx/dsigma``. An
external model states its own convention and is converted:

- ``"noise_to_data"`` (torchcfm, ``flow_matching``, rectified-flow papers): ``t = 0`` is noise,
  ``t = 1`` is data, ``v = dx/dt``; so ``sigma = 1 - t`` and ``dx/dsigma = -v``.
- ``"data_to_noise"`` (diffusers' ``FlowMatchEulerDiscreteScheduler`` and our models): ``t = sigma``.

``t_scale`` multiplies the time handed to the model (diffusers models take ``1000 * sigma``).

Sampling integrates ``z ~ N(0, I)`` from ``sigma = 1`` to 0; the log-likelihood integrates
``x`` from 0 to 1 with ``log p(x) = log N(x_1; 0, I) + int_0^1 div v(x_sigma, sigma) dsigma``
(the instantaneous change of variables), with the exact divergence (one batched
vector-Jacobian product per evaluation, fine for small ``d``) or Hutchinson's estimator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._ops import SOLVERS, check_choice, integrate

__all__ = [
    "TIME_CONVENTIONS",
    "TRACES",
    "ExternalVelocity",
    "exact_divergence",
    "hutchinson_divergence",
    "nfe",
    "ode_log_prob",
    "sample_ode",
    "standard_normal_log_prob",
]

TIME_CONVENTIONS = ("noise_to_data", "data_to_noise")
TRACES = ("exact", "exact-loop", "hutchinson")

#: ``velocity(x, sigma) -> dx/dsigma`` with ``sigma`` a float.
Velocity = Callable[[Tensor, float], Tensor]
#: ``velocity_and_divergence(x, sigma) -> (dx/dsigma, div)``, shapes ``(batch, d)`` and ``(batch,)``.
VelocityWithDivergence = Callable[[Tensor, float], tuple[Tensor, Tensor]]


def nfe(steps: int, solver: str) -> int:
    """Velocity evaluations per sample for ``steps`` fixed steps of ``solver``."""
    return steps * len(SOLVERS[check_choice("solver", solver, SOLVERS)].b)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row, shape ``(batch,)``."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


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
        solver: ``"euler"``, ``"heun"`` or ``"rk4"``; NFE per sample is ``nfe(steps, solver)``.

    Returns:
        Samples of shape ``(n, d)``.
    """
    _check_steps(steps)
    tableau = SOLVERS[check_choice("solver", solver, SOLVERS)]
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
    _check_steps(steps)
    tableau = SOLVERS[check_choice("solver", solver, SOLVERS)]

    def func(y: Tensor, s: float) -> tuple[Tensor, tuple[Tensor, ...]]:
        v, div = velocity_and_divergence(y, s)
        return v, (div,)

    out = []
    with torch.no_grad():
        for chunk in x.split(chunk_size):
            z, (int_div,) = integrate(func, chunk, 0.0, 1.0, steps, tableau, 1)
            out.append(standard_normal_log_prob(z) + int_div)
    return torch.cat(out)


class ExternalVelocity:
    """Wraps an external velocity model ``fn(x, t)`` in our time convention and evaluates it.

    Args:
        fn: The model, called as ``fn(x, t)`` with ``x`` of shape ``(batch, d)``; wrap models with
            another signature in a lambda (torchcfm's torchdyn wrapper: ``lambda x, t: m(t, x)``;
            Meta's ``ModelWrapper``: ``lambda x, t: m(x=x, t=t)``).
        dim: Data dimension.
        time_convention: ``"noise_to_data"`` (t = 0 noise, 1 data: torchcfm, ``flow_matching``)
            or ``"data_to_noise"`` (t = sigma: diffusers).
        t_scale: Factor applied to the time before calling ``fn``.
        scalar_time: Pass ``t`` as a 0-d tensor instead of a ``(batch,)`` tensor.

    Example:
        >>> ext = ExternalVelocity(lambda x, t: -x, dim=2)   # a field from noise towards 0
        >>> ext.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        *,
        dim: int,
        time_convention: str = "noise_to_data",
        t_scale: float = 1.0,
        scalar_time: bool = False,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        check_choice("time_convention", time_convention, TIME_CONVENTIONS)
        if not t_scale > 0:
            raise ValueError(f"t_scale must be > 0, got {t_scale!r}")
        self.fn = fn
        self.dim = dim
        self.time_convention = time_convention
        self.t_scale = float(t_scale)
        self.scalar_time = scalar_time

    def velocity(self, x: Tensor, sigma: float) -> Tensor:
        """``dx/dsigma`` at ``sigma`` (0 data, 1 noise) for ``x`` of shape ``(batch, d)``."""
        t = 1.0 - float(sigma) if self.time_convention == "noise_to_data" else float(sigma)
        t_arg = x.new_tensor(t * self.t_scale)
        if not self.scalar_time:
            t_arg = t_arg.expand(x.shape[0])
        v = self.fn(x, t_arg)
        if not isinstance(v, Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"fn(x, t) must return a tensor of shape {tuple(x.shape)}, got {got}")
        return -v if self.time_convention == "noise_to_data" else v

    def sample(
        self,
        n: int,
        *,
        steps: int = 32,
        solver: str = "euler",
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``n`` samples by integrating from noise to data (``latents`` overrides the noise)."""
        if latents is None:
            latents = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        return sample_ode(self.velocity, latents, steps=steps, solver=solver)

    def log_prob(
        self,
        x: Tensor,
        *,
        steps: int = 64,
        solver: str = "rk4",
        trace: str = "exact",
        num_probes: int = 1,
        generator: torch.Generator | None = None,
        chunk_size: int = 1024,
    ) -> Tensor:
        """``log p(x)`` by the instantaneous change of variables, shape ``(n,)``.

        Args:
            x: Data ``(n, d)``.
            steps, solver: The ODE solver (see ``ode_log_prob``).
            trace: ``"exact"`` (batched autograd), ``"exact-loop"`` (one backward per dimension)
                or ``"hutchinson"`` (``num_probes`` Rademacher probes per point, fixed along the
                path, drawn from ``generator``: unbiased for ``p`` up to Jensen's gap in ``log``).
        """
        check_choice("trace", trace, TRACES)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        if trace == "hutchinson":
            out = []
            for chunk in x.split(chunk_size):
                probes = torch.randint(
                    0, 2, (num_probes, *chunk.shape), generator=generator, device=chunk.device
                )
                probes = probes.to(chunk.dtype) * 2 - 1

                def vdiv(y: Tensor, s: float, probes: Tensor = probes) -> tuple[Tensor, Tensor]:
                    return hutchinson_divergence(self.velocity, y, s, probes)

                out.append(ode_log_prob(vdiv, chunk, steps=steps, solver=solver, chunk_size=chunk_size))
            return torch.cat(out)
        loop = trace == "exact-loop"
        return ode_log_prob(
            lambda y, s: exact_divergence(self.velocity, y, s, loop=loop),
            x,
            steps=steps,
            solver=solver,
            chunk_size=chunk_size,
        )
