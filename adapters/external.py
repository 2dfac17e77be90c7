r"""Evaluate a velocity model trained elsewhere (torchcfm, Meta's ``flow_matching``, yours) with our metrics.

An external model states its own time convention and is converted to ours (``sigma`` from 0,
data, to 1, noise; velocity ``dx/dsigma``; see ``jko_plugin.sampling.ode``):

- ``"noise_to_data"`` (torchcfm, ``flow_matching``, rectified-flow papers): ``t = 0`` is noise,
  ``t = 1`` is data, ``v = dx/dt``; so ``sigma = 1 - t`` and ``dx/dsigma = -v``.
- ``"data_to_noise"`` (diffusers' ``FlowMatchEulerDiscreteScheduler`` and our models): ``t = sigma``.

``t_scale`` multiplies the time handed to the model (diffusers models take ``1000 * sigma``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from jko_plugin._validate import choice, positive, positive_int
from jko_plugin.sampling.ode import exact_divergence, hutchinson_divergence, ode_log_prob, sample_ode

__all__ = ["TIME_CONVENTIONS", "TRACES", "ExternalVelocity"]

TIME_CONVENTIONS = ("noise_to_data", "data_to_noise")
TRACES = ("exact", "exact-loop", "hutchinson")


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
        positive_int("dim", dim)
        choice("time_convention", time_convention, TIME_CONVENTIONS)
        positive("t_scale", t_scale)
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
        choice("trace", trace, TRACES)
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
