r"""The continuous-time JKO residual block, a ``normflows`` Flow layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._ops import ACTIVATIONS, SOLVERS, integrate
from .._validate import check_batch, choice, positive_int
from .base import ProximalStep, Transport, check_interval
from .velocity import VelocityMLP, func_divergence

__all__ = ["EXACT_TRACE_MAX_DIM", "TRACE_ESTIMATORS", "JKOBlock"]

TRACE_ESTIMATORS = ("auto", "exact", "hutchinson")
#: With ``trace="auto"``, dimensions up to this use the exact trace in training too.
EXACT_TRACE_MAX_DIM = 32


class JKOBlock(ProximalStep):
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
        velocity: Your own velocity network instead of the MLP: an ``nn.Module`` called as
            ``velocity(x, s)`` with ``x`` of shape ``(batch, d)`` and ``s`` the block's normalised
            time in [0, 1], shape ``(batch,)``, returning ``(batch, d)``. Its divergence comes from
            ``torch.func`` (``func_divergence``); ``hidden``, ``activation`` and ``time_dependent``
            are unused. Such a block has no ``config()``: save it with its own module's code.

    References:
        Xu, Cheng, Xie, "Normalizing flow neural networks by JKO scheme", NeurIPS 2023.

    Example:
        >>> import normflows as nf
        >>> flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), [JKOBlock(2), JKOBlock(2)])
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    block_type = "ode"

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
        velocity: nn.Module | None = None,
    ) -> None:
        super().__init__(dim, "ode")
        choice("solver", solver, SOLVERS)
        choice("trace", trace, TRACE_ESTIMATORS)
        positive_int("steps", steps)
        positive_int("num_probes", num_probes)
        if velocity is None:
            velocity = VelocityMLP(dim, hidden, activation=activation, time_dependent=time_dependent)
        elif not isinstance(velocity, nn.Module):
            raise ValueError(f"velocity must be an nn.Module f(x, t), got {type(velocity).__name__}")
        elif isinstance(velocity, VelocityMLP):
            if velocity.dim != dim:
                raise ValueError(f"velocity has dim {velocity.dim}, the block has dim {dim}")
            # Describe the given MLP itself, so that config() rebuilds it.
            hidden = [layer.out_features for layer in velocity.layers[:-1]]
            activation = next(k for k, a in ACTIVATIONS.items() if a is velocity.act)
            time_dependent = velocity.time_dependent
        self.velocity = velocity
        self.hidden = tuple(hidden)
        self.activation = activation
        self.time_dependent = time_dependent
        self.solver = solver
        self.steps = steps
        self.trace = trace
        self.num_probes = num_probes
        # A buffer, so the interval travels with state_dict, .to() and checkpoints.
        # A float64 buffer whatever the module's dtype (see ``_apply``), so the interval travels
        # with state_dict, .to() and checkpoints and agrees exactly with the float64 schedule.
        self.register_buffer("interval", torch.zeros(2, dtype=torch.float64))
        self.set_interval(*interval)

    def _apply(self, fn: object, recurse: bool = True) -> JKOBlock:
        # .to(float32) / .half() would round the time axis: keep its float64 values, move its device.
        exact = self._buffers["interval"].detach().cpu()
        out = super()._apply(fn, recurse)
        self._buffers["interval"] = exact.to(self._buffers["interval"].device)
        return out

    # -- configuration ---------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) that rebuild this block with ``JKOBlock(**config)``.

        Raises:
            ValueError: The block's velocity is a network of your own, which no config describes.
        """
        if not isinstance(self.velocity, VelocityMLP):
            raise ValueError(
                f"a JKOBlock with its own velocity network ({type(self.velocity).__name__}) has no "
                "config to rebuild it from: save the flow with torch.save, or rebuild the block "
                "with JKOBlock(dim, velocity=...) and load its state_dict"
            )
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
        """Place the block on ``[t0, t1]`` of the flow's time axis (``t1 > t0``); stored in the
        ``interval`` buffer, in the module's dtype."""
        t0, t1 = check_interval(t0, t1)
        with torch.no_grad():
            self.interval.copy_(torch.tensor([t0, t1], dtype=torch.float64))

    @property
    def time_interval(self) -> tuple[float, float]:
        """``(t0, t1)`` from the ``interval`` buffer."""
        return float(self.interval[0]), float(self.interval[1])

    @property
    def nfe(self) -> int:
        """Velocity evaluations per sample: ``steps`` times the solver's stages."""
        return self.steps * len(SOLVERS[self.solver].b)

    def velocity_at(self, x: Tensor, t: float | Tensor) -> Tensor:
        """``dx/dt`` at the flow time ``t`` (inside ``[t0, t1]``); ``x`` of shape ``(batch, d)``."""
        t0, t1 = self.time_interval
        s = (t - t0) / (t1 - t0)
        if not isinstance(s, Tensor):
            # A sampler's boundary stages sit a hair outside [t0, t1] (float32 intervals, BOUNDARY_EPS).
            s = min(max(s, 0.0), 1.0)
        return self._field(x, s, trace=False)[0] / (t1 - t0)

    def _field(
        self, x: Tensor, s: float | Tensor, *, trace: bool, probes: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Velocity in normalised time and its divergence (``None`` when ``trace=False``; exact
        unless ``probes`` are given): the MLP's tangents in its own pass, ``torch.func`` otherwise."""
        net = self.velocity
        if isinstance(net, VelocityMLP):
            return net.forward_with_trace(x, s, probes) if trace else (net(x, s), None)
        t = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
        v, div = func_divergence(net, x, t, probes) if trace else (net(x, t), None)
        if v.shape != x.shape:
            raise ValueError(
                f"the velocity network returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}"
            )
        return v, div

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
            v, div = self._field(xs, s, trace=trace, probes=probes)
            rates = () if div is None else (div,)
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

    def extra_repr(self) -> str:
        if not isinstance(self.velocity, VelocityMLP):
            return f"dim={self.dim}, solver={self.solver!r}, steps={self.steps}, trace={self.trace!r}"
        return (
            f"dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}, "
            f"solver={self.solver!r}, steps={self.steps}, trace={self.trace!r}"
        )
