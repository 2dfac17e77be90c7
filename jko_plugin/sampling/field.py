r"""A velocity model on its own time axis, smooth on pieces: what flow-map distillation and the
regularity diagnostics integrate and differentiate.

One convention for every model: time runs from 0 (data) to ``T`` (noise, ``N(0, I)``) and the
field is ``dx/dt``. A flow-matching model has ``T = 1`` (``t`` is its ``sigma``, see
``sampling.ode``); a JKO flow of ODE blocks has ``T = T_N`` and one piece per block, ``[T_{k-1},
T_k]``, as its ``StepSchedule`` places them (the field jumps where two blocks meet). Integration
never lets a solver step cross a piece boundary, and a time ``t`` belongs to the piece with
``t0 < t <= t1`` (``t = 0`` to the first), as in ``StepSchedule.block_at``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import normflows as nf
import torch
from torch import Tensor, nn

from .._ops import SOLVERS, integrate
from .._validate import choice, positive, positive_int

__all__ = ["VelocityField"]

#: ``fn(x, t) -> dx/dt`` with ``x`` of shape ``(batch, d)`` and ``t`` a float or a ``(batch,)`` tensor.
PieceFn = Callable[[Tensor, float | Tensor], Tensor]


class VelocityField:
    r"""``dx/dt = v(x, t)`` on ``[0, T]`` (0 data, ``T`` noise), smooth on each of its pieces.

    Args:
        pieces: ``(t0, t1, fn)`` per piece, consecutive from ``t0 = 0``; ``fn(x, t)`` takes ``t`` as
            a float or as a ``(batch,)`` tensor of per-row times.
        dim: Data dimension.
        modules: The ``nn.Module``\ s the pieces evaluate (frozen while a student learns from them).

    Raises:
        ValueError: No pieces, pieces that are not consecutive from 0, or a bad ``dim``.

    Example:
        >>> field = VelocityField([(0.0, 1.0, lambda x, t: -x)], dim=2)
        >>> z = torch.ones(3, 2, dtype=torch.float64)
        >>> field.transport(z, 1.0, 0.0, steps=16)[0]  # dx/dt = -x from t = 1 down to 0: z * e
        tensor([2.7183, 2.7183], dtype=torch.float64)
    """

    def __init__(
        self, pieces: Sequence[tuple[float, float, PieceFn]], *, dim: int, modules: Sequence[nn.Module] = ()
    ) -> None:
        self.dim = positive_int("dim", dim)
        if not pieces:
            raise ValueError("a velocity field needs at least one (t0, t1, fn) piece, got none")
        bounds = [0.0]
        for k, (t0, t1, fn) in enumerate(pieces):
            if abs(float(t0) - bounds[-1]) > 1e-9 * max(1.0, abs(float(t1))) or not float(t1) > float(t0):
                raise ValueError(f"piece {k} spans ({t0}, {t1}); pieces must be consecutive from t = 0")
            if not callable(fn):
                raise ValueError(f"piece {k}'s velocity must be callable, got {type(fn).__name__}")
            bounds.append(float(t1))
        self.boundaries = tuple(bounds)
        self.fns = tuple(fn for _, _, fn in pieces)
        self.modules = tuple(modules)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: object, *, dim: int | None = None, total_time: float = 1.0) -> VelocityField:
        """The field of ``model``: a ``VelocityField``; a flow-matching model (``velocity(x, sigma)``
        and ``dim``, e.g. ``FlowMatchingModel``: ``T = 1``); a ``JKOFlowModel`` or an
        ``nf.NormalizingFlow`` of ODE JKO blocks (one piece per block on its schedule); or a
        callable ``fn(x, t)`` on ``[0, total_time]`` (then ``dim`` is required).

        Raises:
            ValueError: A JKO flow with map steps or normflows layers (no velocity there), a
                callable without ``dim``, or an object of none of these kinds.
        """
        from .model import JKOFlowModel

        if isinstance(model, VelocityField):
            return model
        if isinstance(model, nf.NormalizingFlow):
            model = JKOFlowModel.from_normflows(model)
        if isinstance(model, JKOFlowModel):
            if set(model.block_types) != {"ode"} or model.layer_boundaries:
                raise ValueError(
                    "a JKO flow is a velocity field only if all its steps are ODE blocks and no "
                    f"normflows layer sits between them, got block types {model.block_types} and "
                    f"layer boundaries {model.layer_boundaries}"
                )
            spans = model.schedule.intervals
            return cls(
                [(t0, t1, step.velocity_at) for step, (t0, t1) in zip(model.steps, spans)],
                dim=model.dim,
                modules=[model],
            )
        velocity = getattr(model, "velocity", None)
        if callable(velocity) and isinstance(getattr(model, "dim", None), int):
            return cls(
                [(0.0, 1.0, velocity)], dim=model.dim, modules=[model] if isinstance(model, nn.Module) else []
            )
        if callable(model):
            if dim is None:
                raise ValueError("a velocity callable needs dim (the data dimension)")
            modules = [model] if isinstance(model, nn.Module) else []
            return cls([(0.0, positive("total_time", total_time), model)], dim=dim, modules=modules)
        raise ValueError(
            "model must be a VelocityField, a flow-matching model, a JKOFlowModel, a normflows flow of "
            f"ODE JKO blocks or a velocity callable, got {type(model).__name__}"
        )

    def cast(self, dtype: torch.dtype, out_dtype: torch.dtype) -> VelocityField:
        """The same field for inputs and outputs in ``out_dtype``, evaluated in ``dtype`` (a
        float64 teacher for a float32 student)."""

        def wrap(fn: PieceFn) -> PieceFn:
            def cast_fn(x: Tensor, t: float | Tensor) -> Tensor:
                t = t.to(dtype) if isinstance(t, Tensor) else t
                return fn(x.to(dtype), t).to(out_dtype)

            return cast_fn

        pieces = [(a, b, wrap(fn)) for a, b, fn in zip(self.boundaries[:-1], self.boundaries[1:], self.fns)]
        return VelocityField(pieces, dim=self.dim, modules=self.modules)

    # -- the axis ------------------------------------------------------------------------------
    @property
    def total_time(self) -> float:
        """``T``: the noise end."""
        return self.boundaries[-1]

    @property
    def num_pieces(self) -> int:
        """Number of smooth pieces (a JKO flow's blocks)."""
        return len(self.fns)

    def piece_index(self, t: Tensor) -> Tensor:
        """Per-row piece index (0-based) of times ``t``: ``t0 < t <= t1``, ``t = 0`` in the first."""
        inner = torch.tensor(self.boundaries[1:-1], dtype=t.dtype, device=t.device)
        return torch.bucketize(t, inner, right=False)

    def piece_of(self, t: float) -> int:
        """The piece index of one time ``t`` (as ``piece_index``)."""
        return int(self.piece_index(torch.tensor([float(t)], dtype=torch.float64))[0])

    # -- evaluation -------------------------------------------------------------------------------
    def __call__(self, x: Tensor, t: float | Tensor, piece: Tensor | int | None = None) -> Tensor:
        """``v(x, t)``: ``t`` a float or per-row ``(batch,)`` times; ``piece`` overrides the piece
        (an index, or one per row) where a time sits on a boundary of the piece that is meant."""
        if not isinstance(t, Tensor):
            k = self.piece_of(t) if piece is None else int(piece)
            return self.fns[k](x, float(t))
        t = t.reshape(-1)
        idx = (
            self.piece_index(t) if piece is None else torch.as_tensor(piece, device=t.device).expand(t.shape)
        )
        if self.num_pieces == 1:
            return self.fns[0](x, t)
        out = x.new_zeros(x.shape)
        for k in torch.unique(idx).tolist():
            rows = idx == k
            out = out.index_put((rows,), self.fns[k](x[rows], t[rows]))
        return out

    def grid(self, num_intervals: int) -> list[float]:
        """``num_intervals`` equal steps from ``T`` down to 0, with every piece boundary added."""
        n = positive_int("num_intervals", num_intervals)
        times = {self.total_time * i / n for i in range(n + 1)} | set(self.boundaries)
        return sorted(times, reverse=True)

    def transport(
        self, x: Tensor, t_from: float, t_to: float, *, steps: int = 64, solver: str = "rk4"
    ) -> Tensor:
        """Integrate ``x`` from ``t_from`` to ``t_to`` (either direction) with steps of at most
        ``T / steps``, split at piece boundaries."""
        positive_int("steps", steps)
        tableau = SOLVERS[choice("solver", solver, SOLVERS)]
        lo, hi = sorted((float(t_from), float(t_to)))
        cuts = [lo] + [b for b in self.boundaries if lo < b < hi] + [hi]
        segments = list(zip(cuts[:-1], cuts[1:]))
        if t_from > t_to:
            segments = [(b, a) for a, b in reversed(segments)]
        for a, b in segments:
            k = self.piece_of(max(a, b))  # the piece the whole segment lies in
            n = max(1, math.ceil(abs(b - a) / self.total_time * steps - 1e-9))
            x, _ = integrate(lambda y, s, k=k: (self.fns[k](y, s), ()), x, a, b, n, tableau, 0)
        return x

    @torch.no_grad()
    def trajectory(self, latents: Tensor, times: Sequence[float], *, steps: int = 64) -> Tensor:
        """States at ``times`` (decreasing, from ``T``) of the paths started at ``latents`` at ``T``:
        shape ``(len(times), n, d)``; RK4 with steps of at most ``T / steps``."""
        times = [float(t) for t in times]
        if (
            not times
            or abs(times[0] - self.total_time) > 1e-12
            or any(a < b for a, b in zip(times, times[1:]))
        ):
            raise ValueError(f"times must decrease from T = {self.total_time}, got {times[:4]}...")
        out, x = [latents], latents
        for a, b in zip(times[:-1], times[1:]):
            x = self.transport(x, a, b, steps=steps)
            out.append(x)
        return torch.stack(out)
