r"""The reverse-time solver grid of ``JKOScheduler``: one stage per model evaluation, noise to data."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from .._ops import SOLVERS, ButcherTableau
from ..schedule import StepSchedule

__all__ = ["BOUNDARY_EPS", "solver_stages"]

#: A solver stage that evaluates block k at its data-side end ``T_{k-1}`` is given the time
#: ``T_{k-1} + BOUNDARY_EPS * h_k`` (see ``JKOScheduler``): ``T_{k-1}`` itself belongs to block k-1.
#: Where a boundary carries a layer event, block stages keep ``BOUNDARY_EPS * h`` away from it.
BOUNDARY_EPS = 1e-9
_EULER = SOLVERS["euler"]
#: A layer event's jump: the model returns the displacement ``x - L(x)``, the scheduler steps by -1.
_LAYER_JUMP = -1.0


class _Stage(NamedTuple):
    time: float  # flow time at which the model is evaluated
    index: int  # stage index inside the solver step
    t_start: float  # flow time at the start of the solver step
    dt: float  # signed step (negative: noise -> data)
    tableau: ButcherTableau


def _shift_off_events(
    t: float, k: int, bounds: tuple[float, ...], h: float, events: Collection[int]
) -> float:
    """Move a stage of block k (1-based) off its ends where the end belongs elsewhere."""
    if t <= bounds[k - 1] and (k > 1 or 0 in events):
        return bounds[k - 1] + BOUNDARY_EPS * h
    if t >= bounds[k] and k in events:
        return bounds[k] - BOUNDARY_EPS * h
    return t


def solver_stages(
    schedule: StepSchedule,
    block_types: Sequence[str],
    events: Collection[int],
    counts: Sequence[int],
    solver: ButcherTableau,
) -> list[_Stage]:
    """The stages from ``T_N`` down to 0: ``counts[k]`` solver steps for an ``"ode"`` block, one Euler
    jump of ``-h`` for a ``"map"`` block, one jump of -1 at each layer event (boundary index in
    ``events``); stage times moved off boundaries that belong elsewhere (``BOUNDARY_EPS``)."""
    steps, bounds = schedule.step_sizes, schedule.boundaries
    stages: list[_Stage] = []
    for k in reversed(range(schedule.num_blocks)):  # block N (noise side) first
        t0, t1, h = bounds[k], bounds[k + 1], steps[k]
        if k + 1 in events:
            stages.append(_Stage(t1, 0, t1, _LAYER_JUMP, _EULER))
        tab = solver if block_types[k] == "ode" else _EULER
        dt = -h / counts[k]
        for i in range(counts[k]):
            start = t1 + i * dt
            for j, c in enumerate(tab.c):
                t = t0 if (c == 1.0 and i == counts[k] - 1) else start + c * dt
                stages.append(_Stage(_shift_off_events(t, k + 1, bounds, h, events), j, start, dt, tab))
    if 0 in events:
        stages.append(_Stage(0.0, 0, 0.0, _LAYER_JUMP, _EULER))
    return stages
