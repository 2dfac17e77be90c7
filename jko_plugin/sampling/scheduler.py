r"""The proximal step schedule of a JKO flow as a diffusers scheduler (SchedulerMixin + ConfigMixin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from .._ops import DEFAULT_SOLVER_STEPS, SOLVERS
from .._validate import choice, positive, positive_int
from ..schedule import GEOMETRIC_GROWTH, GEOMETRIC_H0, OnStepSchedule, StepSchedule
from ..steps.base import BLOCK_TYPES
from ._grid import BOUNDARY_EPS, solver_stages

__all__ = ["BOUNDARY_EPS", "DEFAULT_NUM_BLOCKS", "JKOScheduler", "JKOSchedulerOutput"]

#: Number of blocks of the geometric schedule when neither ``num_blocks`` nor ``step_sizes`` is given.
DEFAULT_NUM_BLOCKS = 8


@dataclass
class JKOSchedulerOutput(BaseOutput):
    """Output of ``JKOScheduler.step``.

    Args:
        prev_sample: The sample to give the model at the next timestep (same shape as ``sample``):
            the next stage's input inside a multi-stage step, the solution after its last stage.
    """

    prev_sample: Tensor


class JKOScheduler(OnStepSchedule, SchedulerMixin, ConfigMixin):
    r"""Time grid of a JKO flow's N proximal steps, and the reverse-time solver that samples it.

    Block k (k = 1 is the data side) performs the JKO step with step size ``h_k`` and occupies the
    flow-time interval ``[T_{k-1}, T_k]``, ``T_k = h_1 + ... + h_k`` (the ``StepSchedule`` in
    ``schedule``, which owns that axis). Sampling integrates ``dx/dt = v(x, t)`` from ``T_N``
    (noise) down to 0 (data), block by block.

    Step sizes are explicit (``step_sizes``) or geometric, ``h_k = min(h0 * growth^(k-1), h_max)``
    (``StepSchedule.geometric``'s defaults ``h0 = 0.5``, ``growth = 1.4``; 8 blocks).

    Timesteps: an ``"ode"`` block takes ``steps_per_block`` solver steps (re-gridded by
    ``set_timesteps(num_inference_steps)``). A multi-stage solver gets one timestep per stage, as
    diffusers' Heun scheduler does: for RK4 a step from ``t`` contributes ``t, t+dt/2, t+dt/2, t+dt``
    and ``step()`` returns the next stage's input until the last stage returns the solution. A
    ``"map"`` block (a ``JKOStep``) gets one timestep, ``T_k``, and one exact Euler jump of length
    ``h_k``: the model returns the secant velocity ``(x - F(x)) / h_k``, so the jump lands on the
    step map ``F(x)``.

    Layer events: a normflows layer that sits between JKO steps (an ``ActNorm``, a permutation)
    takes no time. ``layer_boundaries`` lists the boundaries ``T_j`` (``j`` in ``0..N``) that carry
    one; each gets one timestep at exactly ``T_j``, where the model returns the displacement
    ``x - L(x)`` of the layers there and the scheduler jumps by -1 to land on ``L(x)``.

    Block boundaries: the velocity field jumps at ``T_k`` (two networks meet there). A time
    ``t`` belongs to the block with ``T_{k-1} < t <= T_k`` (``t = 0`` to block 1), so a stage that
    needs block k at its data-side end ``T_{k-1}`` (k > 1) is given ``T_{k-1} + BOUNDARY_EPS * h_k``
    instead (and a stage at an end that carries a layer event is moved the same distance inside):
    the model keeps its ``(sample, timestep)`` signature and the evaluation moves by ``1e-9`` of
    the block's normalised time, far below the solver's error.

    Args:
        num_blocks: Number of blocks N (default ``len(step_sizes)``, or 8 for the geometric schedule).
        step_sizes: Explicit ``[h_1, ..., h_N]`` (all > 0), data side first. Exclusive with ``h0``,
            ``growth`` and ``h_max``.
        h0: First geometric step (default 0.5).
        growth: Geometric ratio (default 1.4).
        h_max: Cap of the geometric steps (default: none).
        solver: ``"rk4"`` (default), ``"heun"`` or ``"euler"`` (explicit Runge-Kutta in ``SOLVERS``).
        steps_per_block: Solver steps per ``"ode"`` block in the default grid (default 3,
            ``DEFAULT_SOLVER_STEPS``: a ``JKOBlock``'s own, so sampling follows the trained map).
        block_types: ``"ode"`` or ``"map"`` per block, data side first (default: all ``"ode"``).
        layer_boundaries: Indices ``j`` of the boundaries ``T_j`` that carry a layer event.

    Raises:
        ValueError: A step size, ``h0``, ``growth`` or ``h_max`` that is not > 0; ``num_blocks``
            different from ``len(step_sizes)`` or ``len(block_types)``; an unknown solver or block type;
            ``step_sizes`` together with a geometric parameter; a layer boundary outside ``0..N``.

    References:
        Xu, Cheng, Xie, "Normalizing flow neural networks by JKO scheme", NeurIPS 2023.

    Example:
        >>> s = JKOScheduler(num_blocks=3)
        >>> [round(h, 3) for h in s.step_sizes]
        [0.5, 0.7, 0.98]
        >>> s.set_timesteps(num_inference_steps=3)
        >>> len(s.timesteps)  # 3 RK4 steps of 4 stages each
        12
    """

    _compatibles: list[str] = []
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(
        self,
        num_blocks: int | None = None,
        step_sizes: Sequence[float] | None = None,
        *,
        h0: float | None = None,
        growth: float | None = None,
        h_max: float | None = None,
        solver: str = "rk4",
        steps_per_block: int = DEFAULT_SOLVER_STEPS,
        block_types: Sequence[str] | None = None,
        layer_boundaries: Sequence[int] | None = None,
    ) -> None:
        choice("solver", solver, SOLVERS)
        steps_per_block = positive_int("steps_per_block", steps_per_block)
        if num_blocks is not None:
            num_blocks = positive_int("num_blocks", num_blocks)
        if step_sizes is not None:
            if isinstance(step_sizes, (Tensor, np.ndarray)):
                step_sizes = step_sizes.tolist()
            given = {k: v for k, v in (("h0", h0), ("growth", growth), ("h_max", h_max)) if v is not None}
            if given:
                raise ValueError(f"step_sizes is exclusive with h0, growth and h_max, got both and {given}")
            if isinstance(step_sizes, (str, bytes)) or not isinstance(step_sizes, Sequence) or not step_sizes:
                raise ValueError(f"step_sizes must be a non-empty sequence of numbers, got {step_sizes!r}")
            schedule = StepSchedule(tuple(step_sizes))
            if num_blocks is not None and num_blocks != schedule.num_blocks:
                raise ValueError(f"num_blocks={num_blocks} but step_sizes has {schedule.num_blocks} entries")
        else:
            h0 = positive("h0", GEOMETRIC_H0 if h0 is None else h0)
            growth = positive("growth", GEOMETRIC_GROWTH if growth is None else growth)
            schedule = StepSchedule.geometric(
                DEFAULT_NUM_BLOCKS if num_blocks is None else num_blocks, h0=h0, growth=growth, h_max=h_max
            )
            h_max = None if h_max is None else float(h_max)
        n = schedule.num_blocks
        if block_types is not None:
            if isinstance(block_types, str) or len(block_types) != n:
                raise ValueError(f"block_types must list one type per block ({n}), got {block_types!r}")
            block_types = [choice("block_types entry", b, BLOCK_TYPES) for b in block_types]
        events = sorted(
            {positive_int("layer_boundaries entry", j, minimum=0) for j in layer_boundaries or ()}
        )
        if events and events[-1] > n:
            raise ValueError(
                f"layer_boundaries must index the boundaries T_0..T_{n}, got {list(layer_boundaries)}"
            )
        # Normalised, JSON-serialisable config (so that a round trip is exact).
        self.register_to_config(
            num_blocks=n,
            step_sizes=None if step_sizes is None else list(schedule.step_sizes),
            h0=h0,
            growth=growth,
            h_max=h_max,
            steps_per_block=steps_per_block,
            block_types=None if block_types is None else list(block_types),
            layer_boundaries=events or None,
        )
        self._schedule = schedule
        self._types = tuple(block_types) if block_types is not None else ("ode",) * n
        self._events = frozenset(events)
        self.set_timesteps()

    @classmethod
    def from_schedule(cls, schedule: object, **config: object) -> JKOScheduler:
        """A scheduler on ``schedule``'s time axis (a ``StepSchedule``, a scheduler or step sizes);
        ``config`` sets the other options (``solver``, ``steps_per_block``, ``block_types``, ...)."""
        return cls(step_sizes=list(StepSchedule.coerce(schedule).step_sizes), **config)

    # -- the schedule ------------------------------------------------------------------------
    @property
    def block_types(self) -> tuple[str, ...]:
        """``"ode"`` or ``"map"`` per block, data side first."""
        return self._types

    @property
    def layer_boundaries(self) -> tuple[int, ...]:
        """Indices ``j`` of the boundaries ``T_j`` with a layer event, ascending."""
        return tuple(sorted(self._events))

    # Every config entry is also a plain attribute, so reading one never hits diffusers' deprecated
    # config-attribute path (``step_sizes`` and ``block_types`` above are the resolved values).
    @property
    def h0(self) -> float | None:
        """First geometric step (``None`` for explicit ``step_sizes``)."""
        return self.config.h0

    @property
    def growth(self) -> float | None:
        """Geometric ratio (``None`` for explicit ``step_sizes``)."""
        return self.config.growth

    @property
    def h_max(self) -> float | None:
        """Cap of the geometric steps, if any."""
        return self.config.h_max

    @property
    def solver(self) -> str:
        """The Runge-Kutta method (a key of ``SOLVERS``)."""
        return self.config.solver

    @property
    def steps_per_block(self) -> int:
        """Solver steps per ``"ode"`` block in the default grid."""
        return self.config.steps_per_block

    @property
    def order(self) -> int:
        """Stages per solver step (RK4: 4, Heun: 2, Euler: 1)."""
        return len(SOLVERS[self.config.solver].b)

    @property
    def step_index(self) -> int | None:
        """Index into ``timesteps`` of the next ``step()`` call (``None`` before the first)."""
        return self._step_index

    def _derived(
        self, schedule: StepSchedule, block_types: Sequence[str], events: Sequence[int]
    ) -> JKOScheduler:
        types = None if all(b == "ode" for b in block_types) else list(block_types)
        return type(self).from_schedule(
            schedule,
            solver=self.config.solver,
            steps_per_block=self.config.steps_per_block,
            block_types=types,
            layer_boundaries=list(events) or None,
        )

    def refine(self) -> JKOScheduler:
        """A schedule with every interval halved (``StepSchedule.refine``): 2N blocks, same total
        time, solver and grid; layer events stay on their boundaries."""
        return self._derived(
            self._schedule.refine(), [b for b in self._types for _ in range(2)], [2 * j for j in self._events]
        )

    def reparametrize(self, movements: Sequence[float]) -> JKOScheduler:
        """A schedule of N blocks over the same total time in which each block moves the same W2
        distance (``StepSchedule.reparametrize``; same solver, grid, block types and events)."""
        return self._derived(self._schedule.reparametrize(movements), self._types, sorted(self._events))

    # -- the diffusers interface --------------------------------------------------------------
    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None
    ) -> None:
        """Build ``timesteps`` (flow times from ``T_N`` down to 0, one per solver stage and layer event).

        Args:
            num_inference_steps: Total solver steps. Default: ``steps_per_block`` per ``"ode"`` block.
                Otherwise each ``"map"`` block keeps its one jump and the rest is shared equally among
                the ``"ode"`` blocks (the remainder going to the longest ones); steps never cross a
                block boundary. Layer events are not counted.
            device: Device of ``timesteps`` (float64, or float32 on MPS).

        Raises:
            ValueError: Fewer steps than blocks, or a count that ``"map"`` blocks cannot absorb.
        """
        steps = self._schedule.step_sizes
        ode = [k for k, b in enumerate(self._types) if b == "ode"]
        n_map = self.num_blocks - len(ode)
        counts = [1] * self.num_blocks
        if num_inference_steps is None:
            for k in ode:
                counts[k] = self.config.steps_per_block
        else:
            n = positive_int("num_inference_steps", num_inference_steps)
            if n < self.num_blocks or (not ode and n != n_map):
                raise ValueError(
                    f"num_inference_steps must be at least the number of blocks ({self.num_blocks}) and "
                    f"leave steps for the 'ode' blocks (map blocks take one each), got {n}"
                )
            base, extra = divmod(n - n_map, len(ode))
            longest = sorted(ode, key=lambda k: -steps[k])[:extra]
            for k in ode:
                counts[k] = base + (k in longest)
        stages = solver_stages(self._schedule, self._types, self._events, counts, SOLVERS[self.config.solver])
        self._stages = stages
        self.num_inference_steps = sum(counts)
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        self.timesteps = torch.tensor([s.time for s in stages], dtype=dtype, device=device)
        self._step_index: int | None = None
        self._x_start: Tensor | None = None
        self._derivatives: list[Tensor] = []

    def scale_model_input(self, sample: Tensor, timestep: float | Tensor | None = None) -> Tensor:
        """The identity: the model takes the sample as it is."""
        return sample

    def _tolerance(self) -> float:
        return 1e-6 * max(1.0, self._schedule.total_time)

    def _index_for_timestep(self, t: float) -> int:
        for i, s in enumerate(self._stages):
            if s.index == 0 and abs(s.time - t) <= self._tolerance():
                return i
        raise ValueError(
            f"timestep {t} does not start a solver step of this schedule; call set_timesteps() and "
            "step through scheduler.timesteps in order"
        )

    def step(
        self,
        model_output: Tensor,
        timestep: float | Tensor,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> JKOSchedulerOutput | tuple[Tensor]:
        """Advance one solver stage of the reverse-time ODE ``dx/dt = model_output``.

        Args:
            model_output: The velocity ``dx/dt`` at ``(sample, timestep)``, same shape as ``sample``.
            timestep: The current entry of ``timesteps`` (checked against the schedule).
            sample: The model's input at this timestep, any shape.
            generator: Unused (the sampler is deterministic); accepted for pipeline compatibility.
            return_dict: Return a ``JKOSchedulerOutput`` (default) or the tuple ``(prev_sample,)``.

        Returns:
            ``prev_sample``: the next stage's input, or after a step's last stage the solution.

        Raises:
            ValueError: A timestep out of order, past the end of the schedule, or a shape mismatch.
        """
        t = float(timestep.reshape(-1)[0]) if isinstance(timestep, Tensor) else float(timestep)
        if self._step_index is None:
            self._step_index = self._index_for_timestep(t)
        if self._step_index >= len(self._stages):
            raise ValueError("the schedule is finished; call set_timesteps() before sampling again")
        stage = self._stages[self._step_index]
        if abs(stage.time - t) > self._tolerance():
            raise ValueError(f"expected timestep {stage.time} (step index {self._step_index}), got {t}")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}"
            )
        if stage.index == 0:
            self._x_start, self._derivatives = sample, []
        self._derivatives.append(model_output)
        tab, dt, x = stage.tableau, stage.dt, self._x_start
        last = stage.index == len(tab.b) - 1
        weights = tab.b if last else tab.a[stage.index + 1]
        for w, k in zip(weights, self._derivatives):
            if w != 0.0:
                x = x + (dt * w) * k
        if last:
            self._x_start, self._derivatives = None, []
        self._step_index += 1
        if not return_dict:
            return (x,)
        return JKOSchedulerOutput(prev_sample=x)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        # SchedulerMixin looks names up in the diffusers namespace only, where this class is absent.
        return [cls]
