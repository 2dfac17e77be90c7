r"""The continuous-time JKO residual block, a ``normflows`` Flow layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from normflows.flows import Flow
from torch import Tensor

from ._ops import SOLVERS, check_choice, integrate
from .velocity import VelocityMLP

__all__ = ["JKOBlock", "Transport", "TRACE_ESTIMATORS", "EXACT_TRACE_MAX_DIM", "check_batch"]

TRACE_ESTIMATORS = ("auto", "exact", "hutchinson")
#: With ``trace="auto"``, dimensions up to this use the exact trace in training too.
EXACT_TRACE_MAX_DIM = 32


@dataclass
class Transport:
    """What one data -> noise pass of a JKO step yields per sample, all of shape ``(batch,)``
    except ``z`` ``(batch, d)``.

    Attributes:
        z: The pushed points ``T(x)``.
        log_det: ``log|det dT/dx|`` (``None`` from ``JKOBlock.transport(x, log_det=False)``).
        sq_displacement: ``|T(x) - x|^2``.
        kinetic_energy: ``integral |f(x_t, t)|^2 dt`` along the path, or ``None`` for steps that
            are not ODE flows (``JKOStep``).
    """

    z: Tensor
    log_det: Tensor | None
    sq_displacement: Tensor
    kinetic_energy: Tensor | None


def check_batch(x: Tensor, dim: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a finite tensor of shape ``(batch, dim)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, {dim}), got shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"{name} has trailing dimension {x.shape[1]}, the flow expects {dim}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} of {x.shape[0]} rows")


class JKOBlock(Flow):
    r"""One JKO step as the flow map of ``dx/dt = f_theta(x, t)`` over the time interval ``[t0, t1]``.

    Directions follow normflows: ``inverse(x)`` goes data -> latent by integrating forward in
    time (the direction a JKO block is trained in); ``forward(z)`` goes latent -> data by
    integrating backward. ``log|det|`` is the integral of ``div f`` along the path (Liouville).

    The network sees the normalised time ``s = (t - t0) / (t1 - t0)``, so changing the interval
    (the trainer sets it to the block's share of the schedule's time) keeps the network valid.

    Args:
        dim: Data dimension ``d``.
        hidden: Hidden layer widths of the velocity MLP.
        activation: ``"tanh"`` (default), ``"softplus"``, ``"silu"`` or ``"elu"``.
        time_dependent: Whether ``f`` depends on ``t``.
        solver: ``"rk4"`` (default), ``"heun"`` or ``"euler"``.
        steps: Solver steps across the interval.
        trace: Divergence while training: ``"exact"``, ``"hutchinson"``, or ``"auto"`` (exact
            for ``dim <= EXACT_TRACE_MAX_DIM``). Evaluation (no grad or ``eval()`` mode) is
            always exact.
        num_probes: Rademacher probes for the Hutchinson estimator.
        interval: ``(t0, t1)`` with ``t1 > t0``.

    References:
        Xu, Cheng, Xie, "Normalizing flow neural networks by JKO scheme", NeurIPS 2023.

    Example:
        >>> import normflows as nf
        >>> flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), [JKOBlock(2), JKOBlock(2)])
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        time_dependent: bool = True,
        solver: str = "rk4",
        steps: int = 4,
        trace: str = "auto",
        num_probes: int = 1,
        interval: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        check_choice("solver", solver, SOLVERS)
        check_choice("trace", trace, TRACE_ESTIMATORS)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if not isinstance(num_probes, int) or num_probes < 1:
            raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
        self.velocity = VelocityMLP(dim, hidden, activation=activation, time_dependent=time_dependent)
        self.dim = dim
        self.hidden = tuple(hidden)
        self.activation = activation
        self.time_dependent = time_dependent
        self.solver = solver
        self.steps = steps
        self.trace = trace
        self.num_probes = num_probes
        # A buffer, so the interval travels with state_dict, .to() and checkpoints.
        self.register_buffer("interval", torch.zeros(2))
        self.set_interval(*interval)

    # -- configuration ---------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this block with ``JKOBlock(**config)``."""
        return {
            "dim": self.dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "time_dependent": self.time_dependent,
            "solver": self.solver,
            "steps": self.steps,
            "trace": self.trace,
            "num_probes": self.num_probes,
            "interval": [float(t) for t in self.interval],
        }

    def set_interval(self, t0: float, t1: float) -> None:
        """Place the block on ``[t0, t1]`` of the flow's time axis (``t1 > t0``)."""
        if not (float(t1) > float(t0)):
            raise ValueError(f"interval must satisfy t1 > t0, got ({t0}, {t1})")
        with torch.no_grad():
            self.interval.copy_(torch.tensor([float(t0), float(t1)], dtype=torch.float64))

    @property
    def duration(self) -> float:
        """Length ``t1 - t0`` of the block's time interval."""
        return float(self.interval[1] - self.interval[0])

    def velocity_at(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``dx/dt`` at the flow time ``t`` (inside ``[t0, t1]``); ``x`` of shape ``(batch, d)``."""
        t0, t1 = (float(v) for v in self.interval)
        return self.velocity(x, (t - t0) / (t1 - t0)) / (t1 - t0)

    def _use_exact_trace(self) -> bool:
        if not (self.training and torch.is_grad_enabled()):
            return True
        if self.trace == "auto":
            return self.dim <= EXACT_TRACE_MAX_DIM
        return self.trace == "exact"

    # -- integration -----------------------------------------------------------------------
    def _integrate(
        self, x: Tensor, reverse: bool, kinetic: bool, trace: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        probes = None
        if trace and not self._use_exact_trace():
            probes = torch.randint(0, 2, (x.shape[0], self.num_probes, self.dim), device=x.device)
            probes = probes.to(x.dtype) * 2 - 1
        t0, t1 = (float(v) for v in self.interval)
        scale = 1.0 / (t1 - t0)

        # Integrate in normalised time s in [0, 1]: dx/ds = f(x, s); |f|^2 dt = |f|^2 ds (with the
        # rescaled f), so the kinetic energy in flow time is the s-integral divided by (t1 - t0).
        def func(xs: Tensor, s: float) -> tuple[Tensor, tuple[Tensor, ...]]:
            if trace:
                v, div = self.velocity.forward_with_trace(xs, s, probes)
                rates = (div,)
            else:
                v, rates = self.velocity(xs, s), ()
            return v, (*rates, v.square().sum(-1)) if kinetic else rates

        s0, s1 = (1.0, 0.0) if reverse else (0.0, 1.0)
        n = int(trace) + int(kinetic)
        z, integrals = integrate(func, x, s0, s1, self.steps, SOLVERS[self.solver], n)
        if kinetic:
            integrals[-1] = integrals[-1] * scale
        return z, integrals

    def transport(self, x: Tensor, *, log_det: bool = True) -> Transport:
        """Data -> latent pass with the per-sample terms of the JKO loss, in one integration.

        ``log_det=False`` skips the divergence (``Transport.log_det`` is ``None``): the points,
        displacement and kinetic energy then cost one velocity pass per stage instead of ``d + 1``
        for the exact trace."""
        check_batch(x, self.dim)
        z, integrals = self._integrate(x, reverse=False, kinetic=True, trace=log_det)
        return Transport(z, integrals[0] if log_det else None, (z - x).square().sum(-1), integrals[-1])

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``, shapes ``(batch, d)`` and ``(batch,)``."""
        check_batch(x, self.dim)
        z, (log_det,) = self._integrate(x, reverse=False, kinetic=False)
        return z, log_det

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)`` by reverse-time integration."""
        check_batch(z, self.dim, "z")
        x, (log_det,) = self._integrate(z, reverse=True, kinetic=False)
        return x, log_det

    @torch.no_grad()
    def inversion_error(self, x: Tensor) -> float:
        """Mean Euclidean distance ``|forward(inverse(x)) - x|`` over the batch."""
        z, _ = self.inverse(x)
        x_back, _ = self.forward(z)
        return float((x_back - x).norm(dim=-1).mean())

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}, "
            f"solver={self.solver!r}, steps={self.steps}, trace={self.trace!r}"
        )
