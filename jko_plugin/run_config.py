r"""``RunConfig``: the model and training settings of a run, with each step kind's tuned defaults."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ._ops import ACTIVATIONS
from ._validate import choice, positive, positive_int
from .sampling.scheduler import JKOScheduler
from .schedule import GEOMETRIC_GROWTH, GEOMETRIC_H0, StepSchedule
from .steps.block import DENSITIES, TRACE_ESTIMATORS
from .steps.context import context_settings
from .steps.kinds import (
    COUPLING_MIXES,
    DEFAULT_COUPLING_MIX,
    DEFAULT_STEP_KIND,
    default_first_options,
    get_step_kind,
)

__all__ = ["RunConfig", "default_config"]

#: Fallbacks of the settings a step kind does not tune (``StepKind.run_defaults``).
_RUN_DEFAULTS = {"num_blocks": 6, "iterations": 300, "lr": 3e-3, "first_share": 1.0}


@dataclass(frozen=True)
class RunConfig:
    """Model and training settings of ``jko-flow demo`` / ``jko-flow train``.

    ``block`` names a step kind of ``STEP_KINDS``; ``num_blocks``, ``iterations``, ``lr``,
    ``first_share`` and (ODE blocks) ``steps`` left at ``None`` take that kind's tuned values
    (``StepKind.run_defaults``);
    ``first_share`` is block 1's share of a wall-clock budget against 1 for each other block
    (``budget_weights``, as ``compare`` trains). The fields a kind reads are its
    ``StepKind.run_options`` (ODE blocks: ``hidden`` and ``activation``, by default
    ``default_velocity(dim)``'s, ``steps``, ``trace``, ``density``, by default ``"auto"``: the
    trained map's exact density up to d = 3, where the ODE's let long runs degrade; spline and coupling steps:
    ``spline_layers``, ``spline_hidden``; spline steps ``spline_bins`` and ``spline_mix``, by
    default ``default_spline_bins(dim)`` and ``default_spline_mix(dim)``; coupling steps
    ``coupling_mix``, by default ``DEFAULT_COUPLING_MIX``, see ``make_coupling_step``;
    ``first_tail_bound``, spline and coupling steps: step 1's splines act on ``[-B, B]`` with this
    ``B`` instead of the others' 5; by default ``FIRST_TAIL_BOUND`` for standardised data and
    spline steps up to d = 2, ``default_first_options``). Step sizes are geometric,
    ``h_k = h0 * growth**(k-1)``.
    With ``standardize`` (default) the flow's data-side layer is a ``Standardize`` fitted on the
    training split, so NLLs and samples are in the data's own units. ``num_classes`` or
    ``context_dim`` make every step conditional (``make_flow``'s context options). With
    ``keep_best``, a validation split of the training points is held out (``validation_split``), each
    step keeps the best of ``step_checks`` iterates on it (its proximal loss, ``TrainerOptions``;
    with ``step_patience``, stopping after that many checks in a row without a better one) and the
    flow is cut after the step with the best NLL on it (``JKOTrainer.keep_best_steps``).
    ``compile`` trains each step through ``torch.compile`` (``TrainerOptions.compile``).

    Example:
        >>> RunConfig().block, RunConfig().num_blocks, RunConfig(block="ode").num_blocks
        ('spline', 4, 6)
        >>> RunConfig(block="ode").steps, RunConfig(block="ode", steps=8).steps, RunConfig().steps
        (3, 8, None)
    """

    block: str = DEFAULT_STEP_KIND
    num_blocks: int | None = None
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    steps: int | None = None
    trace: str = "auto"
    density: str = "auto"
    spline_layers: int = 2
    spline_hidden: int = 64
    spline_bins: int | None = None
    spline_mix: str | None = None
    coupling_mix: str = DEFAULT_COUPLING_MIX
    iterations: int | None = None
    batch_size: int = 512
    lr: float | None = None
    h0: float = GEOMETRIC_H0
    growth: float = GEOMETRIC_GROWTH
    seed: int = 0
    standardize: bool = True
    num_classes: int | None = None
    context_dim: int | None = None
    keep_best: bool = False
    step_checks: int = 10
    step_patience: int = 0
    first_share: float | None = None
    first_tail_bound: float | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        kind = get_step_kind(self.block)
        context_settings(num_classes=self.num_classes, context_dim=self.context_dim)
        choice("trace", self.trace, TRACE_ESTIMATORS)
        if self.activation is not None:
            choice("activation", self.activation, ACTIVATIONS)
        choice("density", self.density, DENSITIES)
        choice("coupling_mix", self.coupling_mix, COUPLING_MIXES)
        if self.spline_mix is not None:  # None: default_spline_mix(dim), known when the flow is built
            choice("spline_mix", self.spline_mix, COUPLING_MIXES)
        if self.spline_bins is not None:  # None: default_spline_bins(dim)
            positive_int("spline_bins", self.spline_bins)
        positive_int("step_checks", self.step_checks, minimum=0)
        positive_int("step_patience", self.step_patience, minimum=0)
        for name in {**_RUN_DEFAULTS, **kind.run_defaults}:  # a kind may tune a field no other reads
            if not hasattr(self, name):
                raise ValueError(
                    f"step kind {kind.name!r}: run_defaults names {name!r}, not a RunConfig field"
                )
            if getattr(self, name) is None:
                object.__setattr__(self, name, kind.run_defaults.get(name, _RUN_DEFAULTS.get(name)))
        if self.steps is not None:  # None: the kind does not integrate an ODE
            positive_int("steps", self.steps)
        positive("first_share", self.first_share)
        if self.first_tail_bound is not None:
            positive("first_tail_bound", self.first_tail_bound)
            if "tail_bound" not in inspect.signature(kind.build).parameters:
                raise ValueError(
                    "first_tail_bound is for steps made of splines (spline, coupling), "
                    f"not block={self.block!r}"
                )
        if self.hidden is not None:  # None: default_velocity(dim), known when the flow is built
            object.__setattr__(self, "hidden", tuple(self.hidden))
        self.schedule  # noqa: B018 - validates num_blocks, h0 and growth

    @property
    def schedule(self) -> StepSchedule:
        """The geometric ``StepSchedule`` of ``num_blocks`` steps."""
        return StepSchedule.geometric(self.num_blocks, h0=self.h0, growth=self.growth)

    @property
    def budget_weights(self) -> tuple[float, ...]:
        """Each block's share of a wall-clock budget (``TimeBudget(weights=...)``): ``first_share``
        for block 1, 1 for the others.

        >>> RunConfig(block="ode", num_blocks=3).budget_weights
        (3.0, 1.0, 1.0)
        """
        return (float(self.first_share),) + (1.0,) * (self.num_blocks - 1)

    @property
    def step_sizes(self) -> list[float]:
        """``schedule.step_sizes`` as a list."""
        return list(self.schedule.step_sizes)

    def step_options(self) -> dict:
        """The options of this kind's step builder, from the fields the kind reads (``None``: the
        builder's own default)."""
        kind = get_step_kind(self.block)
        fields = {option: getattr(self, name) for name, option in kind.run_options.items()}
        options = {option: value for option, value in fields.items() if value is not None}
        return {**options, **context_settings(num_classes=self.num_classes, context_dim=self.context_dim)}

    def first_step_options(self, dim: int | None = None) -> dict:
        """``make_flow``'s ``first``: step 1's builder options that differ from the others'. Without
        ``first_tail_bound``, on standardised data of dimension ``dim``: the kind's
        ``default_first_options`` (made for data that lie within about 3).

        >>> RunConfig(first_tail_bound=3.0).first_step_options()
        {'tail_bound': 3.0}
        >>> RunConfig().first_step_options(2), RunConfig(standardize=False).first_step_options(2)
        ({'tail_bound': 3.0}, {})
        """
        if self.first_tail_bound is not None:
            return {"tail_bound": float(self.first_tail_bound)}
        return default_first_options(self.block, dim) if self.standardize and dim is not None else {}

    def scheduler(self, schedule: StepSchedule | None = None) -> JKOScheduler:
        """The ``JKOScheduler`` that samples this run's flow: geometric from the config, or on
        ``schedule`` (what the trainer ended with) when that differs; ODE blocks are sampled with
        their own RK4 steps."""
        per_block = {"steps_per_block": self.steps} if self.block == "ode" else {}
        if schedule is None or schedule == self.schedule:
            return JKOScheduler(num_blocks=self.num_blocks, h0=self.h0, growth=self.growth, **per_block)
        return JKOScheduler.from_schedule(schedule, **per_block)


def default_config(block: str = DEFAULT_STEP_KIND, **overrides: object) -> RunConfig:
    """The run settings tuned for the step kind ``block`` (see ``RunConfig``), with ``overrides``."""
    return RunConfig(block=block, **overrides)
