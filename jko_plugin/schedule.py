r"""The time axis of a JKO flow: step sizes ``h_k``, boundaries ``T_k``, and how to make and re-space them."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ._validate import positive, positive_int

__all__ = ["GEOMETRIC_GROWTH", "GEOMETRIC_H0", "OnStepSchedule", "StepSchedule"]

#: The geometric rule's defaults, ``h_k = GEOMETRIC_H0 * GEOMETRIC_GROWTH**(k-1)``: the ratio is
#: JKO-iFlow's (Xu, Cheng, Xie 2023, who start at 0.25); starting at 0.5 trained the 2-D demo
#: better within the same number of blocks (BENCHMARKS.md s.1).
GEOMETRIC_H0 = 0.5
GEOMETRIC_GROWTH = 1.4
#: Two time axes agree when every boundary matches to this relative precision: a few float32
#: roundings, so that a block whose float32 interval was set from a float64 schedule agrees.
FLOAT32_RTOL = 1e-6


def _as_list(values: object, name: str) -> list:
    if isinstance(values, (Tensor, np.ndarray)):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}")
    return list(values)


@dataclass(frozen=True)
class StepSchedule:
    r"""The step sizes ``(h_1, ..., h_N)`` of a JKO flow, data side first, and the time axis they span.

    Block k performs the JKO step with step size ``h_k`` (proximal weight ``1 / (2 h_k)``) and
    occupies ``[T_{k-1}, T_k]`` with ``T_k = h_1 + ... + h_k``: an ODE block integrates over that
    interval, and ``JKOScheduler`` samples the flow from ``T_N`` (noise) down to 0 (data). This
    object is the one owner of that axis: the trainer, ``JKOScheduler``, ``JKOFlowModel`` and the
    pipeline all hold or derive one, and ``place`` puts the steps of a flow on it.

    Args:
        step_sizes: ``h_1, ..., h_N`` (finite, > 0).

    Raises:
        ValueError: An empty sequence, or a step size that is not a finite positive number.

    Example:
        >>> s = StepSchedule.geometric(3)
        >>> [round(h, 3) for h in s.step_sizes], [round(t, 3) for t in s.boundaries]
        ([0.5, 0.7, 0.98], [0.0, 0.5, 1.2, 2.18])
        >>> s.block_at(0.5), s.block_at(0.6)
        (1, 2)
    """

    step_sizes: tuple[float, ...]

    def __post_init__(self) -> None:
        sizes = _as_list(self.step_sizes, "step_sizes")
        if not sizes:
            raise ValueError("step_sizes must hold at least one step size, got none")
        object.__setattr__(
            self, "step_sizes", tuple(positive(f"step_sizes[{i}]", h) for i, h in enumerate(sizes))
        )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def geometric(
        cls,
        num_blocks: int,
        *,
        h0: float = GEOMETRIC_H0,
        growth: float = GEOMETRIC_GROWTH,
        h_max: float | None = None,
    ) -> StepSchedule:
        """``h_k = min(h0 * growth^(k-1), h_max)`` for ``k = 1..num_blocks``."""
        n = positive_int("num_blocks", num_blocks)
        h0, growth = positive("h0", h0), positive("growth", growth)
        cap = None if h_max is None else positive("h_max", h_max)
        sizes = [h0 * growth**k for k in range(n)]
        return cls(tuple(min(h, cap) if cap is not None else h for h in sizes))

    @classmethod
    def from_intervals(cls, intervals: Sequence[tuple[float, float]]) -> StepSchedule:
        """The schedule whose blocks occupy ``intervals`` (data side first, starting at 0, each
        starting where the previous one ends to ``FLOAT32_RTOL``)."""
        spans = [(float(a), float(b)) for a, b in intervals]
        if not spans:
            raise ValueError("intervals must hold at least one (t0, t1) pair, got none")
        scale = max(1.0, abs(spans[-1][1]))
        expected = 0.0
        for k, (a, b) in enumerate(spans, start=1):
            if abs(a - expected) > FLOAT32_RTOL * scale:
                raise ValueError(
                    f"block {k} starts at t = {a}, but the time axis reaches {expected} there: "
                    "the blocks' intervals must be consecutive from 0 (place them with StepSchedule.place)"
                )
            expected = b
        return cls(tuple(b - a for a, b in spans))

    @classmethod
    def coerce(cls, schedule: object) -> StepSchedule:
        """A ``StepSchedule`` from itself, from anything holding one (``JKOScheduler.schedule``) or
        from a sequence of step sizes."""
        if isinstance(schedule, StepSchedule):
            return schedule
        held = getattr(schedule, "schedule", None)
        if isinstance(held, StepSchedule):
            return held
        try:
            return cls(tuple(_as_list(schedule, "schedule")))
        except ValueError as err:
            raise ValueError(
                f"schedule must be a StepSchedule, a JKOScheduler or a sequence of step sizes: {err}"
            ) from err

    # -- the axis ----------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of blocks N."""
        return len(self.step_sizes)

    @property
    def boundaries(self) -> tuple[float, ...]:
        """``(T_0 = 0, T_1, ..., T_N)``, summed in float64 left to right."""
        out = [0.0]
        for h in self.step_sizes:
            out.append(out[-1] + h)
        return tuple(out)

    @property
    def intervals(self) -> tuple[tuple[float, float], ...]:
        """``((T_0, T_1), ..., (T_{N-1}, T_N))``, data side first."""
        b = self.boundaries
        return tuple(zip(b[:-1], b[1:]))

    @property
    def total_time(self) -> float:
        """``T_N``."""
        return self.boundaries[-1]

    @property
    def proximal_weights(self) -> tuple[float, ...]:
        """``1 / (2 h_k)``: the weight of ``|T(x) - x|^2`` in block k's JKO loss."""
        return tuple(1.0 / (2.0 * h) for h in self.step_sizes)

    def block_at(self, t: float) -> int:
        """The block k (1 = data side) with ``T_{k-1} < t <= T_k``; ``t = 0`` gives 1.

        Raises:
            ValueError: ``t`` outside ``[0, T_N]`` (beyond float32 rounding).
        """
        bounds = self.boundaries
        slack = FLOAT32_RTOL * max(1.0, bounds[-1])
        if not (-slack <= t <= bounds[-1] + slack):
            raise ValueError(f"timestep must lie in [0, {bounds[-1]}] (the flow's time axis), got {t}")
        return min(max(bisect.bisect_left(bounds, t), 1), self.num_blocks)

    def agrees_with(self, other: StepSchedule, *, rtol: float = FLOAT32_RTOL) -> bool:
        """Same number of blocks and boundaries equal to ``rtol`` (relative to ``max(1, T_N)``)."""
        if other.num_blocks != self.num_blocks:
            return False
        scale = max(1.0, self.total_time)
        return all(abs(a - b) <= rtol * scale for a, b in zip(self.boundaries, other.boundaries))

    # -- placing steps -------------------------------------------------------------------------
    def place(self, steps: Sequence[object]) -> None:
        """Put step k (data side first) on ``[T_{k-1}, T_k]`` through its ``set_interval``.

        Raises:
            ValueError: ``len(steps) != num_blocks``.
        """
        if len(steps) != self.num_blocks:
            raise ValueError(
                f"the schedule has {self.num_blocks} step sizes but there are {len(steps)} steps"
            )
        for step, (t0, t1) in zip(steps, self.intervals):
            step.set_interval(t0, t1)

    # -- derived schedules ---------------------------------------------------------------------
    def truncate(self, num_blocks: int) -> StepSchedule:
        """The first ``num_blocks`` steps."""
        n = positive_int("num_blocks", num_blocks)
        if n > self.num_blocks:
            raise ValueError(f"cannot keep {n} of {self.num_blocks} step sizes")
        return StepSchedule(self.step_sizes[:n])

    def extend(self, growth: float = 1.0) -> StepSchedule:
        """One more step, ``h_{N+1} = growth * h_N``."""
        return StepSchedule((*self.step_sizes, self.step_sizes[-1] * positive("growth", growth)))

    def refine(self) -> StepSchedule:
        """Every interval halved: 2N blocks over the same total time."""
        return StepSchedule(tuple(h / 2.0 for h in self.step_sizes for _ in range(2)))

    def reparametrize(self, movements: Sequence[float]) -> StepSchedule:
        r"""N blocks over the same total time in which each block is predicted to move the same W2 distance.

        Rule (JKO-iFlow's adaptive re-spacing): take the W2 speed as constant inside each old block,
        ``r_k = m_k / h_k``, so the movement accumulated up to time t is piecewise linear, and place
        the new boundaries where it reaches ``j / N`` of the total. Iterating (retrain, measure,
        re-space) converges to equal movements.

        Args:
            movements: ``m_k``, the W2 distance block k moved its input, e.g.
                ``sqrt(E|T_k(x) - x|^2)`` (data side first, all > 0).

        Raises:
            ValueError: ``movements`` is not N finite positive numbers.
        """
        values = _as_list(movements, "movements")
        if len(values) != self.num_blocks:
            raise ValueError(
                f"movements must hold one value per block ({self.num_blocks}), got {movements!r}"
            )
        m = [positive(f"movements[{i}]", v) for i, v in enumerate(values)]
        cum = [0.0]
        for v in m:
            cum.append(cum[-1] + v)
        total, n, bounds = cum[-1], self.num_blocks, self.boundaries
        new = [0.0]
        for j in range(1, n):
            target = total * j / n
            k = min(max(bisect.bisect_right(cum, target), 1), n)  # old block holding the target
            new.append(bounds[k - 1] + (target - cum[k - 1]) * self.step_sizes[k - 1] / m[k - 1])
        new.append(bounds[-1])
        return StepSchedule(tuple(b - a for a, b in zip(new[:-1], new[1:])))


class OnStepSchedule:
    """Read-only views of the ``StepSchedule`` an object holds in ``_schedule`` (the scheduler and
    the diffusers model), so that each asks the one owner of the time axis."""

    _schedule: StepSchedule

    @property
    def schedule(self) -> StepSchedule:
        """The time axis: step sizes ``h_k`` and boundaries ``T_k``."""
        return self._schedule

    @property
    def num_blocks(self) -> int:
        """Number of JKO steps N."""
        return self._schedule.num_blocks

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """``(h_1, ..., h_N)``, data side first."""
        return self._schedule.step_sizes

    @property
    def boundaries(self) -> tuple[float, ...]:
        """``(T_0 = 0, T_1, ..., T_N)``; block k occupies ``[T_{k-1}, T_k]``."""
        return self._schedule.boundaries

    @property
    def intervals(self) -> tuple[tuple[float, float], ...]:
        """``((T_0, T_1), ..., (T_{N-1}, T_N))``, data side first."""
        return self._schedule.intervals

    @property
    def proximal_weights(self) -> tuple[float, ...]:
        """``1 / (2 h_k)``: the weight of ``|T(x) - x|^2`` in block k's JKO loss."""
        return self._schedule.proximal_weights
