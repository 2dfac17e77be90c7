r"""The continuous-time JKO residual block, a ``normflows`` Flow layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._ops import ACTIVATIONS, DEFAULT_SOLVER_STEPS, SOLVERS, integrate, integrate_jacobian
from .._validate import check_batch, choice, positive_int
from .base import ProximalStep, Transport, check_interval
from .velocity import VelocityMLP, func_divergence

__all__ = [
    "DENSITIES",
    "EXACT_MAP_MAX_DIM",
    "EXACT_TRACE_MAX_DIM",
    "SMALL_VELOCITY_MAX_DIM",
    "TRACE_ESTIMATORS",
    "JKOBlock",
    "default_velocity",
]

TRACE_ESTIMATORS = ("auto", "exact", "hutchinson")
#: With ``trace="auto"``, dimensions up to this use the exact trace in training too.
EXACT_TRACE_MAX_DIM = 32
#: ``"ode"``: log-det = the divergence integrated along the solver's path (the ODE's density as the
#: steps shrink); ``"map"``: log-det of the discrete solver map itself, from its exact Jacobian,
#: and ``forward`` inverts that map to machine precision; ``"auto"``: ``"map"`` up to
#: ``EXACT_MAP_MAX_DIM``.
DENSITIES = ("ode", "map", "auto")
#: The map's Jacobian costs d tangents per stage, as the exact trace does: free where training
#: takes the exact trace anyway (compare's ``jko`` up to d = 3), d times Hutchinson's price above.
#: Measured on gmm16 at 120 s (seed 0): the map density left 1,496 iterations and NLL 18.05; the
#: ODE density with Hutchinson's trace 8,813 iterations and NLL 17.20 (BENCHMARKS.md s.4).
EXACT_MAP_MAX_DIM = 3
#: Up to this dimension the velocity MLP defaults to 2 x 64 tanh, above it to 3 x 64 SiLU (the
#: flow-matching peers' network). At equal time (compare's ``jko`` recipe, 3 seeds) SiLU lost every
#: moons seed by 0.15-0.21 nats of validation NLL and won every gmm16 seed by 0.05-0.09; its third
#: layer won every gmm16 seed again (0.11-0.16) and 3 x 64 SiLU every gmm8 seed (0.05), with a draw
#: on the 354-row user table (BENCHMARKS.md s.4.0, "The velocity network").
SMALL_VELOCITY_MAX_DIM = 3


def default_velocity(dim: int) -> dict:
    """The velocity MLP's ``hidden`` widths and ``activation`` when not given: ``(64, 64)`` tanh
    up to ``SMALL_VELOCITY_MAX_DIM``, ``(64, 64, 64)`` SiLU above.

    >>> default_velocity(2), default_velocity(16)
    ({'hidden': (64, 64), 'activation': 'tanh'}, {'hidden': (64, 64, 64), 'activation': 'silu'})
    """
    if positive_int("dim", dim) <= SMALL_VELOCITY_MAX_DIM:
        return {"hidden": (64, 64), "activation": "tanh"}
    return {"hidden": (64, 64, 64), "activation": "silu"}


class JKOBlock(ProximalStep):
    r"""One JKO step as the flow map of ``dx/dt = f_theta(x, t)`` over the time interval ``[t0, t1]``.

    Directions follow normflows: ``inverse(x)`` goes data -> latent by integrating forward in
    time (the direction a JKO block is trained in); ``forward(z)`` goes latent -> data by
    integrating backward. ``log|det|`` is the integral of ``div f`` along the path (Liouville).

    The network sees the normalised time ``s = (t - t0) / (t1 - t0)``, so changing the interval
    (the trainer sets it to the block's share of the schedule's time) keeps the network valid.

    Args:
        dim: Data dimension ``d``.
        hidden: Hidden layer widths of the velocity MLP; by default ``default_velocity(dim)``'s.
        activation: ``"tanh"``, ``"softplus"``, ``"silu"`` or ``"elu"``; by default
            ``default_velocity(dim)``'s.
        time_dependent: Whether ``f`` depends on ``t``.
        solver: ``"rk4"`` (default), ``"heun"`` or ``"euler"``.
        steps: Solver steps across the interval (``DEFAULT_SOLVER_STEPS``, 3, as in training runs).
        trace: Divergence while training: ``"exact"``, ``"hutchinson"``, or ``"auto"`` (exact
            for ``dim <= EXACT_TRACE_MAX_DIM``). Evaluation (no grad or ``eval()`` mode) is
            always exact.
        num_probes: Rademacher probes for the Hutchinson estimator.
        interval: ``(t0, t1)`` with ``t1 > t0``.
        density: ``"ode"`` (default), ``"map"`` or ``"auto"`` (see ``DENSITIES``). With ``"map"``
            one discretisation serves training, sampling and scoring: ``inverse`` is the solver
            map ``T`` with ``log|det dT/dx|`` exact (its Jacobian carried through the stages;
            ``trace`` is not used), and ``forward`` is ``T``'s inverse, the reverse-time solve
            refined by ``newton_steps`` Newton steps.
        newton_steps: Newton steps of ``forward`` with ``density="map"``.
        velocity: Your own velocity network instead of the MLP: an ``nn.Module`` called as
            ``velocity(x, s)`` with ``x`` of shape ``(batch, d)`` and ``s`` the block's normalised
            time in [0, 1], shape ``(batch,)``, returning ``(batch, d)``. Its divergence comes from
            ``torch.func`` (``func_divergence``); ``hidden``, ``activation`` and ``time_dependent``
            are unused. Such a block has no ``config()``: save it with its own module's code. A
            conditional block calls it ``velocity(x, s, c)`` with ``c`` the encoded context
            ``(batch, features)``.
        context_dim: Make the block conditional on a continuous context ``(batch, context_dim)``:
            the velocity is ``f(x, s, c)`` (one JKO step per value of ``c``); every call then takes
            ``context=``.
        num_classes: Make the block conditional on class labels ``(batch,)`` in
            ``[0, num_classes)``, seen through a learned embedding of ``embed_dim`` features
            (``ContextEncoder``).
        embed_dim: Width of that embedding (default ``min(num_classes, 16)``).

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
        hidden: Sequence[int] | None = None,
        *,
        activation: str | None = None,
        time_dependent: bool = True,
        solver: str = "rk4",
        steps: int = DEFAULT_SOLVER_STEPS,
        trace: str = "auto",
        num_probes: int = 1,
        interval: tuple[float, float] = (0.0, 1.0),
        density: str = "ode",
        newton_steps: int = 2,
        velocity: nn.Module | None = None,
        context_dim: int | None = None,
        num_classes: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__(dim, "ode", context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim)
        features = self.context_encoder.features
        choice("solver", solver, SOLVERS)
        choice("trace", trace, TRACE_ESTIMATORS)
        choice("density", density, DENSITIES)
        positive_int("steps", steps)
        positive_int("num_probes", num_probes)
        positive_int("newton_steps", newton_steps, minimum=0)
        defaults = default_velocity(dim)
        hidden = defaults["hidden"] if hidden is None else hidden
        activation = defaults["activation"] if activation is None else activation
        if velocity is None:
            velocity = VelocityMLP(
                dim, hidden, activation=activation, time_dependent=time_dependent, context_dim=features
            )
        elif not isinstance(velocity, nn.Module):
            raise ValueError(f"velocity must be an nn.Module f(x, t), got {type(velocity).__name__}")
        elif isinstance(velocity, VelocityMLP):
            if velocity.dim != dim:
                raise ValueError(f"velocity has dim {velocity.dim}, the block has dim {dim}")
            if velocity.context_dim != features:
                raise ValueError(
                    f"velocity has context_dim {velocity.context_dim}, the block's context has "
                    f"{features} features"
                )
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
        self.density = density
        self.newton_steps = newton_steps
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
            "density": self.density,
            "newton_steps": self.newton_steps,
            **self.context_encoder.config(),
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
    def exact_map(self) -> bool:
        """Whether the log-det is the discrete map's own (``density`` ``"map"``, or ``"auto"`` in
        ``dim <= EXACT_MAP_MAX_DIM``)."""
        return self.density == "map" or (self.density == "auto" and self.dim <= EXACT_MAP_MAX_DIM)

    @property
    def nfe(self) -> int:
        """Velocity evaluations per sample of ``forward``: ``steps`` times the solver's stages, and
        with an exact map at most that many again for each Newton step and for the final log-det."""
        passes = self.newton_steps + 2 if self.exact_map else 1
        return passes * self.steps * len(SOLVERS[self.solver].b)

    def velocity_at(self, x: Tensor, t: float | Tensor, context: Tensor | None = None) -> Tensor:
        """``dx/dt`` at the flow time ``t`` (inside ``[t0, t1]``); ``x`` of shape ``(batch, d)``."""
        t0, t1 = self.time_interval
        s = (t - t0) / (t1 - t0)
        if not isinstance(s, Tensor):
            # A sampler's boundary stages sit a hair outside [t0, t1] (float32 intervals, BOUNDARY_EPS).
            s = min(max(s, 0.0), 1.0)
        c = self.context_encoder(context, x)
        return self._field(x, s, trace=False, context=c)[0] / (t1 - t0)

    def _field(
        self,
        x: Tensor,
        s: float | Tensor,
        *,
        trace: bool,
        probes: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Velocity in normalised time and its divergence (``None`` when ``trace=False``; exact
        unless ``probes`` are given): the MLP's tangents in its own pass, ``torch.func`` otherwise.
        ``context``: the encoded context ``(batch, features)`` of a conditional block."""
        net = self.velocity
        if isinstance(net, VelocityMLP):
            if trace:
                return net.forward_with_trace(x, s, probes, context)
            return net(x, s, context), None
        t = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
        extra = () if context is None else (context,)
        v, div = func_divergence(net, x, t, probes, context) if trace else (net(x, t, *extra), None)
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
        self, x: Tensor, reverse: bool, kinetic: bool, trace: bool = True, context: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        probes = None
        if trace and not self._use_exact_trace():
            probes = torch.randint(0, 2, (x.shape[0], self.num_probes, self.dim), device=x.device)
            probes = probes.to(x.dtype) * 2 - 1
        t0, t1 = self.interval  # tensors, not floats: .item() would split a torch.compile graph
        scale = 1.0 / (t1 - t0)

        # Integrate in normalised time s in [0, 1]: dx/ds = f(x, s); |f|^2 dt = |f|^2 ds (with the
        # rescaled f), so the kinetic energy in flow time is the s-integral divided by (t1 - t0).
        def func(xs: Tensor, s: float) -> tuple[Tensor, tuple[Tensor, ...]]:
            v, div = self._field(xs, s, trace=trace, probes=probes, context=context)
            rates = () if div is None else (div,)
            return v, (*rates, v.square().sum(-1)) if kinetic else rates

        s0, s1 = (1.0, 0.0) if reverse else (0.0, 1.0)
        n = int(trace) + int(kinetic)
        z, integrals = integrate(func, x, s0, s1, self.steps, SOLVERS[self.solver], n)
        if kinetic:
            integrals[-1] = integrals[-1] * scale
        return z, integrals

    def _jacobian_field(self, x: Tensor, s: float, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Velocity in normalised time and its Jacobian ``(batch, d, d)``."""
        net = self.velocity
        if isinstance(net, VelocityMLP):
            return net.forward_with_jacobian(x, s, context)
        t = torch.as_tensor(s, dtype=x.dtype, device=x.device).expand(x.shape[0])
        extra = () if context is None else (context,)

        def one(xi: Tensor, ti: Tensor, *ci: Tensor) -> tuple[Tensor, Tensor]:
            out = net(xi.unsqueeze(0), ti.unsqueeze(0), *(c.unsqueeze(0) for c in ci)).squeeze(0)
            return out, out

        jac, v = torch.func.vmap(torch.func.jacfwd(one, has_aux=True))(x, t, *extra)
        return v, jac

    def _solver_map(
        self, x: Tensor, kinetic: bool, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """The data -> latent solver map ``T``: ``(T(x), log|det dT/dx|, [kinetic energy], dT/dx)``."""
        t0, t1 = self.time_interval

        def func(xs: Tensor, s: float) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
            v, jac = self._jacobian_field(xs, s, context)
            return v, jac, (v.square().sum(-1),) if kinetic else ()

        z, jac, integrals = integrate_jacobian(
            func, x, 0.0, 1.0, self.steps, SOLVERS[self.solver], int(kinetic)
        )
        if kinetic:
            integrals[0] = integrals[0] / (t1 - t0)
        return z, torch.linalg.slogdet(jac).logabsdet, integrals, jac

    def _invert_map(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``T^{-1}(z)`` and ``log|det dT^{-1}/dz|``: the reverse-time solve, then up to
        ``newton_steps`` Newton steps on ``T(x) = z`` with ``T``'s exact Jacobian, stopping once the
        residual is at rounding level; the last pass also gives the log-det at the returned point."""
        tableau = SOLVERS[self.solver]
        x, _ = integrate(
            lambda xs, s: (self._field(xs, s, trace=False, context=context)[0], ()),
            z,
            1.0,
            0.0,
            self.steps,
            tableau,
            0,
        )
        tol = 100 * torch.finfo(z.dtype).eps * max(1.0, float(z.detach().abs().max()))
        for k in range(self.newton_steps + 1):
            y, log_det, _, jac = self._solver_map(x, kinetic=False, context=context)
            residual = y - z
            if k == self.newton_steps or float(residual.detach().abs().max()) <= tol:
                break
            x = x - torch.linalg.solve(jac, residual.unsqueeze(-1)).squeeze(-1)
        return x, -log_det

    def transport(self, x: Tensor, *, log_det: bool = True, context: Tensor | None = None) -> Transport:
        """Data -> latent pass with the per-sample terms of the JKO loss, in one integration.

        ``log_det=False`` skips the divergence (``Transport.log_det`` is ``None``): the points,
        displacement and kinetic energy then cost one velocity pass per stage instead of ``d + 1``
        for the exact trace."""
        check_batch(x, self.dim)
        c = self.context_encoder(context, x)
        if log_det and self.exact_map:
            z, ld, (kinetic,), _ = self._solver_map(x, kinetic=True, context=c)
            return Transport(z, ld, (z - x).square().sum(-1), kinetic)
        z, integrals = self._integrate(x, reverse=False, kinetic=True, trace=log_det, context=c)
        return Transport(z, integrals[0] if log_det else None, (z - x).square().sum(-1), integrals[-1])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``, shapes ``(batch, d)`` and ``(batch,)``."""
        check_batch(x, self.dim)
        c = self.context_encoder(context, x)
        if self.exact_map:
            z, log_det, _, _ = self._solver_map(x, kinetic=False, context=c)
            return z, log_det
        z, (log_det,) = self._integrate(x, reverse=False, kinetic=False, context=c)
        return z, log_det

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)`` by reverse-time integration (with an exact map:
        then refined to ``inverse``'s exact inverse by Newton steps)."""
        check_batch(z, self.dim, "z")
        c = self.context_encoder(context, z)
        if self.exact_map:
            return self._invert_map(z, c)
        x, (log_det,) = self._integrate(z, reverse=True, kinetic=False, context=c)
        return x, log_det

    def extra_repr(self) -> str:
        if not isinstance(self.velocity, VelocityMLP):
            return f"dim={self.dim}, solver={self.solver!r}, steps={self.steps}, trace={self.trace!r}"
        return (
            f"dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}, "
            f"solver={self.solver!r}, steps={self.steps}, trace={self.trace!r}"
        )
