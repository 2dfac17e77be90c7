r"""The registry of JKO step kinds (``STEP_KINDS``) and the ready-made flows built from it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import normflows as nf
import torch
from normflows.flows import Flow

from .._ops import DEFAULT_SOLVER_STEPS
from .._validate import choice, positive_int
from .base import ProximalStep
from .block import JKOBlock
from .context import context_settings
from .grid import make_grid_step
from .layers import build_layer
from .map import JKOStep
from .solver import solver_steps

__all__ = [
    "AUTOREGRESSIVE_MAX_DIM",
    "COUPLING_MIXES",
    "DEFAULT_COUPLING_MIX",
    "DEFAULT_STEP_KIND",
    "FIRST_TAIL_BOUND",
    "STEP_KINDS",
    "StepKind",
    "default_first_options",
    "default_spline_bins",
    "default_spline_mix",
    "default_step_kind",
    "jko_steps",
    "make_flow",
    "make_coupling_step",
    "make_spline_step",
    "solver_steps",
]


def _shuffle(dim: int, perm: list[int]) -> dict:
    """The description of normflows' ``Permute`` with the fixed order ``perm``."""
    return {"class": "Permute", "kwargs": {"num_channels": dim, "mode": "shuffle", "perm": perm}}


def _reversal(dim: int) -> dict:
    # Reversing the coordinates twice is the identity in any dimension, unlike normflows' "swap".
    return _shuffle(dim, list(range(dim))[::-1])


#: How a coupling step mixes coordinates that its alternating masks keep apart (and a spline step,
#: ``make_spline_step(mix=...)``, beyond its reversals): ``"none"``,
#: ``"permute"`` (the step works in a random order of the coordinates, its own for each step,
#: undone at its end) or ``"lu"`` (an identity-initialised learned linear map first).
COUPLING_MIXES = ("none", "permute", "lu")
#: ``make_coupling_step``'s and ``RunConfig``'s mix: it won on validation NLL (digits, 2 seeds).
DEFAULT_COUPLING_MIX = "lu"


def _mixed(specs: list[dict], dim: int, mix: str) -> list[dict]:
    """``specs`` (a step's layers) preceded by the coordinate mixing ``mix`` (``COUPLING_MIXES``)."""
    choice("mix", mix, COUPLING_MIXES)
    if mix == "lu":
        return [{"class": "IdentityInitLULinear", "kwargs": {"num_channels": dim}}, *specs]
    if mix == "permute":
        perm = torch.randperm(dim).tolist()
        return [_shuffle(dim, perm), *specs, _shuffle(dim, torch.argsort(torch.tensor(perm)).tolist())]
    return specs


#: Up to this dimension a spline step's layers have 16 bins, above it 8: in 2-D the finer splines
#: won on validation NLL at equal time (moons and checkerboard, 3 seeds; BENCHMARKS.md s.4.0).
#: 64 bins won on the detailed rose and tree pictures at 300 s and lost on moons and checkerboard
#: at 30-60 s, so they are asked for (``spline_bins=64``, ``compare``'s ``jko-spline-64``).
FINE_SPLINE_MAX_DIM = 2


def default_spline_bins(dim: int) -> int:
    """Bins per spline of ``make_spline_step`` when none are given: 16 up to
    ``FINE_SPLINE_MAX_DIM``, 8 above (fewer parameters per coordinate where there are many).

    >>> default_spline_bins(2), default_spline_bins(9)
    (16, 8)
    """
    return 16 if dim <= FINE_SPLINE_MAX_DIM else 8


def default_spline_mix(dim: int) -> str:
    """``make_spline_step``'s ``mix`` when none is given: ``"none"`` up to ``FINE_SPLINE_MAX_DIM``,
    ``"lu"`` above (in d = 16 the LU map won on validation NLL on 3 seeds of 3, by 0.02-0.07
    nats at equal time; BENCHMARKS.md s.4.0; in 2-D it was not measured).

    >>> default_spline_mix(2), default_spline_mix(16)
    ('none', 'lu')
    """
    return "none" if positive_int("dim", dim) <= FINE_SPLINE_MAX_DIM else "lu"


def make_spline_step(
    dim: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    bins: int | None = None,
    tail_bound: float = 5.0,
    res_blocks: int = 2,
    mix: str | None = None,
    context_dim: int | None = None,
    num_classes: int | None = None,
    embed_dim: int | None = None,
) -> JKOStep:
    """One JKO step of ``layers`` autoregressive rational-quadratic spline layers
    (``AutoregressiveRQSpline``: normflows' layer with a faster spline evaluation),
    with coordinate reversals between them (``bins``: ``default_spline_bins(dim)`` when ``None``).
    With ``context_dim`` or ``num_classes`` the splines' conditioners see the context (their
    ``num_context_channels``; labels through the step's embedding, ``ContextEncoder``). ``mix``
    as in ``make_coupling_step``, ``default_spline_mix(dim)`` when ``None``.

    The step is the identity at initialisation: each spline starts as the identity and the
    reversals come in pairs. A proximal step must start where it is cheapest (no movement); a
    random permutation such as ``LULinearPermute`` would start it far from ``x``.

    >>> make_spline_step(3).nfe  # two autoregressive layers, d = 3 passes each when sampling
    6
    """
    positive_int("layers", layers)
    bins = default_spline_bins(dim) if bins is None else positive_int("bins", bins)
    mix = default_spline_mix(dim) if mix is None else mix
    context = context_settings(context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim)
    specs: list[dict] = []
    for i in range(layers):
        specs.append(
            {
                "class": "AutoregressiveRQSpline",
                "kwargs": {
                    "num_input_channels": dim,
                    "num_blocks": res_blocks,
                    "num_hidden_channels": hidden,
                    "num_bins": bins,
                    "tail_bound": tail_bound,
                    **_context_channels(context),
                },
            }
        )
        if i < layers - 1 or layers % 2 == 0:
            specs.append(_reversal(dim))
    return JKOStep([build_layer(s) for s in _mixed(specs, dim, mix)], dim=dim, kind="spline", **context)


def make_coupling_step(
    dim: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    bins: int = 8,
    tail_bound: float = 5.0,
    res_blocks: int = 2,
    mix: str = DEFAULT_COUPLING_MIX,
    context_dim: int | None = None,
    num_classes: int | None = None,
    embed_dim: int | None = None,
) -> JKOStep:
    """One JKO step of ``layers`` identity-initialised coupling RQ-spline layers
    (``IdentityInitCoupledRQSpline``) with alternating masks, so every coordinate is transformed
    once in two layers; one network pass per layer in both directions (sampling in d = 64 costs
    2 passes per step, not 2 x 64). Context as in ``make_spline_step``.

    The masks split the coordinates the same way in every layer; ``mix`` (``COUPLING_MIXES``)
    lets each step mix them first: ``"lu"`` (default) an identity-initialised learned linear map
    (``IdentityInitLULinear``), ``"permute"`` a random order of its own, ``"none"`` neither. On
    digits (d = 64, 120 s, 2 seeds) ``"lu"`` scored 5.3 and 6.0 nats better on validation than
    ``"none"``, ``"permute"`` 3.3 and 4.5 (BENCHMARKS.md s.4.0).

    >>> step = make_coupling_step(4)
    >>> step.nfe, step.kind
    (2, 'coupling')
    """
    positive_int("layers", layers)
    positive_int("dim", dim, minimum=2)
    context = context_settings(context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim)
    specs = [
        {
            "class": "IdentityInitCoupledRQSpline",
            "kwargs": {
                "num_input_channels": dim,
                "num_blocks": res_blocks,
                "num_hidden_channels": hidden,
                "num_bins": bins,
                "tail_bound": tail_bound,
                "reverse_mask": bool(i % 2),
                **_context_channels(context),
            },
        }
        for i in range(layers)
    ]
    return JKOStep([build_layer(s) for s in _mixed(specs, dim, mix)], dim=dim, kind="coupling", **context)


def _context_channels(context: dict) -> dict:
    # Unconditional layers keep the description they always had (no num_context_channels key).
    features = context.get("context_dim") or context.get("embed_dim")
    return {"num_context_channels": features} if features else {}


@dataclass(frozen=True)
class StepKind:
    """A kind of JKO step: how to build one, and the run settings tuned for it.

    Attributes:
        name: Registry key (``--block`` on the command line).
        build: ``build(dim, **options) -> ProximalStep``.
        run_options: ``RunConfig`` field -> ``build`` option, for the fields this kind uses.
        run_defaults: ``RunConfig`` values tuned for this kind (BENCHMARKS.md s.1).
        summary: One line for help texts.
        first_defaults: ``first_defaults(dim) -> options``: step 1's own ``build`` options for
            standardised data (``default_first_options``).
    """

    name: str
    build: Callable[..., ProximalStep]
    run_options: Mapping[str, str] = field(default_factory=dict)
    run_defaults: Mapping[str, object] = field(default_factory=dict)
    summary: str = ""
    first_defaults: Callable[[int], dict] = field(default=lambda dim: {})  # noqa: ARG005


#: Step 1's spline interval [-B, B] of spline flows on standardised data up to
#: ``FINE_SPLINE_MAX_DIM`` (``RunConfig``: ``train``, ``demo``, ``compare``). The data lie within 3
#: there, and on [-3, 3] step 1's bins are 5/3 finer where they are. It won validation NLL on
#: checkerboard (3 seeds of 3), tied on moons, won on rose and tree with 64 bins; the later steps
#: keep 5, so latent draws beyond 3 are still moved (BENCHMARKS.md s.4.0).
FIRST_TAIL_BOUND = 3.0


def _spline_first_defaults(dim: int) -> dict:
    return {"tail_bound": FIRST_TAIL_BOUND} if dim <= FINE_SPLINE_MAX_DIM else {}


#: Every kind of step the CLI, ``make_flow``, ``RunConfig`` and ``compare`` know, by name.
STEP_KINDS: dict[str, StepKind] = {
    "spline": StepKind(
        "spline",
        make_spline_step,
        {"spline_layers": "layers", "spline_hidden": "hidden", "spline_bins": "bins", "spline_mix": "mix"},
        {"num_blocks": 4, "iterations": 600, "lr": 3e-3},
        "JKOSteps of autoregressive rational-quadratic spline layers (exact, fast to train)",
        _spline_first_defaults,
    ),
    "coupling": StepKind(
        "coupling",
        make_coupling_step,
        {"spline_layers": "layers", "spline_hidden": "hidden", "coupling_mix": "mix"},
        {"num_blocks": 4, "iterations": 600, "lr": 3e-3},
        "JKOSteps of an LU linear map and coupling RQ-spline layers (one network pass per layer "
        "either way: fast sampling)",
    ),
    "grid": StepKind(
        "grid",
        make_grid_step,
        {"spline_bins": "bins"},  # one layer per step: two lost (BENCHMARKS.md s.4.0)
        {"num_blocks": 4, "iterations": 600, "lr": 1e-2, "first_share": 3.0},
        "JKOSteps of 2-D splines conditioned through a table over the other coordinate (pictures)",
        _spline_first_defaults,
    ),
    "ode": StepKind(
        "ode",
        JKOBlock,
        {
            "hidden": "hidden",
            "activation": "activation",
            "steps": "steps",
            "trace": "trace",
            "density": "density",
        },
        # Block 1 moves the data the most: 3 shares of a time budget; lr 1e-2 won at equal time on
        # gmm16 and moons, every seed against 3e-3. The solver steps are the blocks' own default.
        {"num_blocks": 6, "iterations": 300, "lr": 1e-2, "steps": DEFAULT_SOLVER_STEPS, "first_share": 3.0},
        "JKOBlocks: continuous-time residual blocks, the flow of an MLP velocity field",
    ),
}
#: The kind used when none is named: it trained the best 2-D density at equal time (BENCHMARKS.md s.1).
DEFAULT_STEP_KIND = "spline"
#: Above this dimension ``default_step_kind`` picks coupling steps: an autoregressive spline samples
#: with one network pass per coordinate per layer, a coupling spline with one per layer. Measured
#: (BENCHMARKS.md s.4.0, 120 s, 3 seeds): in d = 16 the autoregressive steps score 0.83 nats
#: better (17.66 against 18.49) and sample 10k points in 8.7 s against 0.5 s; in d = 64 they take
#: minutes to sample, the coupling steps seconds.
AUTOREGRESSIVE_MAX_DIM = 16


def default_step_kind(dim: int) -> str:
    """The step kind for data of dimension ``dim``: ``DEFAULT_STEP_KIND`` up to
    ``AUTOREGRESSIVE_MAX_DIM``, ``"coupling"`` above.

    >>> default_step_kind(2), default_step_kind(64)
    ('spline', 'coupling')
    """
    return DEFAULT_STEP_KIND if positive_int("dim", dim) <= AUTOREGRESSIVE_MAX_DIM else "coupling"


def default_first_options(block: str, dim: int) -> dict:
    """Step 1's (the data side's) builder options for standardised data, ``make_flow``'s ``first``
    (``RunConfig`` passes them when it standardises): ``{"tail_bound": FIRST_TAIL_BOUND}`` for
    spline steps up to ``FINE_SPLINE_MAX_DIM``. ``make_flow`` alone assumes nothing of the data.

    >>> default_first_options("spline", 2), default_first_options("spline", 3)
    ({'tail_bound': 3.0}, {})
    """
    return dict(get_step_kind(block).first_defaults(positive_int("dim", dim)))


def get_step_kind(name: str) -> StepKind:
    """``STEP_KINDS[name]``, or ``ValueError`` listing the kinds."""
    return STEP_KINDS[choice("block", name, STEP_KINDS)]


def make_flow(
    dim: int,
    num_blocks: int,
    *,
    block: str = DEFAULT_STEP_KIND,
    schedule: object | None = None,
    first: Mapping[str, object] | None = None,
    **options: object,
) -> nf.NormalizingFlow:
    """A ``nf.NormalizingFlow`` of ``num_blocks`` JKO steps on ``N(0, I)``, ready for ``JKOTrainer``.

    With a context option (``context_dim`` or ``num_classes``, and ``embed_dim``) every step is
    conditional and the flow is a ``nf.ConditionalNormalizingFlow`` (``log_prob(x, context)``,
    ``sample(n, context)``).

    Args:
        dim: Data dimension.
        num_blocks: Number of JKO steps.
        block: A key of ``STEP_KINDS`` (``"spline"``, ``"ode"``).
        schedule: Where to place the steps (a ``StepSchedule``, ``JKOScheduler`` or step sizes);
            default the geometric ``StepSchedule`` (the trainer re-places them on its own).
        first: Options of step 1 (the data side) that replace ``options`` there, e.g.
            ``{"tail_bound": 3.0}``: splines on a narrower interval where the standardised data
            lie (``default_first_options(block, dim)``, what ``RunConfig`` asks for standardised
            data).
        **options: Options of the kind's builder (``JKOBlock``: ``hidden``, ``steps``, ``solver``,
            ...; ``make_spline_step``: ``layers``, ``hidden``, ``bins``, ...), and the context
            options every kind takes.

    Example:
        >>> flow = make_flow(2, 3, block="ode", hidden=(16,), steps=1)
        >>> [f.time_interval for f in jko_steps(flow)][0]
        (0.0, 0.5)
        >>> labelled = make_flow(2, 2, block="spline", hidden=8, num_classes=3)
        >>> labelled.log_prob(torch.randn(4, 2), torch.tensor([0, 1, 2, 2])).shape
        torch.Size([4])
    """
    from ..schedule import StepSchedule

    kind = get_step_kind(block)
    positive_int("num_blocks", num_blocks)
    try:
        steps = [kind.build(dim, **{**options, **_first(first, k)}) for k in range(num_blocks)]
    except TypeError as err:
        names = sorted({*options, *(first or {})})
        raise ValueError(f"bad options {names} for block={block!r}: {err}") from err
    sched = StepSchedule.geometric(num_blocks) if schedule is None else StepSchedule.coerce(schedule)
    sched.place(steps)
    # normflows order: flows[0] next to the latent, so the first step trained (data side) goes last.
    cls = nf.ConditionalNormalizingFlow if steps[0].conditional else nf.NormalizingFlow
    return cls(nf.distributions.DiagGaussian(dim, trainable=False), steps[::-1])


def _first(first: Mapping[str, object] | None, k: int) -> dict:
    """``make_flow``'s options of step ``k`` (0: the data side) beyond the shared ones."""
    return dict(first or {}) if k == 0 else {}


def jko_steps(flow: nf.NormalizingFlow | Flow) -> list[ProximalStep]:
    """The JKO steps of ``flow`` in training order (data side first, i.e. ``flows[-1]`` first)."""
    return [f for f in reversed(flow.flows) if isinstance(f, ProximalStep)]


def fresh_like(step: ProximalStep, *, seed: int) -> ProximalStep:
    """A new step of ``step``'s configuration with fresh weights drawn from ``seed`` (the global
    RNG untouched), on ``step``'s device and dtype."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = type(step).from_config(step.config())
    p = next(step.parameters(), None)
    return new if p is None else new.to(device=p.device, dtype=p.dtype)
