r"""The comparison's methods: each trains within a budget, samples, scores log-prob and counts NFE."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._ops import solver_nfe
from .._validate import positive, positive_int
from ..steps.block import JKOBlock
from ..steps.layers import flow_nfe
from ..workflows import (
    NLL_SOLVER_STEPS,
    RunConfig,
    default_config,
    ode_density,
    solver_gap,
)
from .selection import fit_selected_jko, selection_details, selection_rows

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "Budget",
    "FlowMatchingMethod",
    "JKOMethod",
    "Method",
    "NormflowsMethod",
    "PeerFlowMatchingMethod",
    "TrainedModel",
]

#: Solver of flow-matching sampling: 12 RK4 steps, 48 evaluations.
FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER = 12, "rk4"
#: Solver of flow-matching likelihoods (exact divergence).
FM_NLL_STEPS = 64
#: Learning rate of the peers (Adam, cosine decay over the budget).
PEER_LR = 1e-3
BATCH_SIZE = 512


@dataclass(frozen=True)
class Budget:
    """What every method gets: ``seconds`` of wall clock or ``steps`` gradient steps (exactly one).
    ``compile``: the JKO rows train through ``torch.compile`` (its compilation inside their
    budget); the peers' loops are left as their libraries run them."""

    seconds: float | None = None
    steps: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.steps is None):
            raise ValueError(
                f"give exactly one of budget_seconds and steps, got budget_seconds={self.seconds!r}, "
                f"steps={self.steps!r}"
            )
        if self.seconds is not None:
            positive("budget_seconds", self.seconds)
        else:
            positive_int("steps", self.steps)


@dataclass
class TrainedModel:
    """A trained method, ready to be scored.

    Attributes:
        module: The model (its trainable parameters are counted).
        sample: ``(n, generator) -> (n, d)`` samples.
        log_prob: ``(n, d) -> (n,)`` log-densities (the density that is scored).
        nfe: Network evaluations per sample when sampling.
        train_seconds: Wall clock of training, everything included.
        train_steps: Gradient steps taken.
        details: Method-specific figures for ``results.json``.
        fast_sample, fast_nfe: A cheaper sampler of an approximation of the same model (reported
            beside the scored one, never scored for NLL), and its NFE.
        velocity: For an ODE model, what ``VelocityField.from_model`` takes (its velocity field on
            its own time axis): a teacher for flow-map distillation and the Lipschitz diagnostic.
        generate: Latents ``(n, d)`` to samples with the method's own sampler (for the W2
            stability diagnostic), if the method has latents.
    """

    module: nn.Module
    sample: Callable[[int, torch.Generator], Tensor]
    log_prob: Callable[[Tensor], Tensor] | None
    nfe: int
    train_seconds: float
    train_steps: int
    details: dict = field(default_factory=dict)
    fast_sample: Callable[[int, torch.Generator], Tensor] | None = None
    fast_nfe: int | None = None
    velocity: object | None = None
    generate: Callable[[Tensor], Tensor] | None = None


def _latents_to_samples(flow: nn.Module) -> Callable[[Tensor], Tensor]:
    """A normflows flow's sampler from standard-normal latents (through its ``DiagGaussian`` base)."""
    q0 = flow.q0
    return lambda z: flow.forward(q0.loc + torch.exp(q0.log_scale) * z)


class Method:
    """A comparison method: ``train(x, x_val, budget, seed) -> TrainedModel``, on ``x``'s device."""

    name: str = ""
    summary: str = ""
    #: Import names of the optional packages the method needs (see ``adapters.peers.INSTALL_HINTS``).
    requires: tuple[str, ...] = ()
    #: The data dimensions the method models (``None``: any).
    dims: tuple[int, ...] | None = None

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` if the method does not model data of dimension ``dim``."""
        if self.dims is not None and dim not in self.dims:
            raise ValueError(
                f"compare method {self.name!r} models data of dimension {self.dims}, got d = {dim}"
            )

    def check_available(self) -> None:
        """Raise ``ImportError`` naming the install command if a package in ``requires`` is missing."""
        from ..adapters.peers import require

        for package in self.requires:
            try:
                require(package)
            except ImportError as err:
                raise ImportError(f"compare method {self.name!r}: {err}") from err

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        """Train on ``x`` within ``budget`` (``x_val``: held-out points for diagnostics only)."""
        raise NotImplementedError

    @staticmethod
    def selection_split(x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """``(rows to train on, rows to choose on)``: every method of a run holds out the same
        validation split of its training points (``selection_rows``) and makes its choices on it
        (a JKO row its number of steps, a peer its checkpoint), never on ``x_val``, the points the
        row is scored on."""
        x_fit, x_sel, _, _ = selection_rows(x, seed)
        return x_fit, x_sel


class JKOMethod(Method):
    """A JKO flow of one step kind, trained block-wise by ``JKOTrainer``.

    With a time budget the trainer first measures its own costs (``JKOTrainer.estimate_costs``)
    and a ``TimeBudget`` plan shares the time left among the blocks; with ``steps`` every block
    takes ``steps // num_blocks``. The held-out ``selection_split`` chooses each step's iterate
    (``step_checks``) and the number of steps. ODE blocks are scored with the ODE's own density
    (``ode_density``: 8 RK4 steps per block), as flow matching is scored with a fine solver.
    """

    def __init__(self, name: str, block: str, summary: str, **overrides: object) -> None:
        self.name, self.block, self.summary = name, block, summary
        self.overrides = overrides
        self.dims = (2,) if block == "grid" else None  # a table over the other coordinate

    def config(self, dim: int, seed: int) -> RunConfig:
        """The run settings of this method in dimension ``dim`` (``overrides`` on the kind's defaults)."""
        if self.block == "ode":
            # From d = 4 on, Hutchinson's cheaper iterations won at equal time (BENCHMARKS.md s.4).
            trace = "exact" if dim <= 3 else "hutchinson"
            return default_config("ode", seed=seed, **{"trace": trace, **self.overrides})
        return default_config(self.block, seed=seed, **self.overrides)

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        from ..adapters.normflows_baselines import sample_flow

        start = time.perf_counter()
        # Each prefix of a JKO flow is a model of its own: the number of steps is chosen on x_sel.
        x, x_sel = self.selection_split(x, seed)
        config = dataclasses.replace(self.config(x.shape[1], seed), compile=budget.compile)
        flow, _, details = fit_selected_jko(config, x, x_sel, budget, start)
        details["compiled"] = config.compile
        seconds = time.perf_counter() - start

        # One model per row: NLL and samples come from one map. Blocks with an exact map density
        # are scored and sampled as trained; ODE-density blocks are scored with the ODE's fine
        # solver (ode_density) and sampled with it too, and their fast trained-step sampler is
        # reported beside.
        def log_prob(xb: Tensor) -> Tensor:
            with ode_density(flow):
                return flow.log_prob(xb)

        def sample(n: int, gen: torch.Generator) -> Tensor:
            with ode_density(flow):
                return sample_flow(flow, n, generator=gen)

        with ode_density(flow):
            nfe = flow_nfe(flow)
        fast_nfe = flow_nfe(flow)
        blocks = [f for f in flow.flows if isinstance(f, JKOBlock)]
        if blocks:
            exact = all(b.exact_map for b in blocks)
            details.update(
                trace=config.trace,
                density="exact map (solver map's own Jacobian)" if exact else "ODE divergence",
                scored_map=(
                    f"the trained map: {blocks[0].steps} x {blocks[0].solver} per block, Newton inverse"
                    if exact
                    else f"{NLL_SOLVER_STEPS} x {config.num_blocks} x rk4 for NLL and samples"
                ),
            )
            if not exact:  # how far the trained steps' log-det strays from the scored density
                details["solver_gap"] = solver_gap(flow, x_sel)
        return TrainedModel(
            flow,
            sample,
            log_prob,
            nfe,
            seconds,
            sum(details["iterations_per_block"]),
            details,
            fast_sample=None if nfe == fast_nfe else lambda n, gen: sample_flow(flow, n, generator=gen),
            fast_nfe=None if nfe == fast_nfe else fast_nfe,
            velocity=flow if config.block == "ode" else None,
            generate=_latents_to_samples(flow),
        )


class FlowMatchingMethod(Method):
    """Conditional flow matching (our trainer, ``adapters.flow_matching``) on the Gaussian
    interpolant ``path`` (``jko_plugin.interpolants``), sampled with 12 RK4 steps; the checkpoint
    with the lowest validation flow-matching loss (fixed draws) is kept."""

    def __init__(self, name: str, coupling: str, summary: str, path: str = "linear") -> None:
        self.name, self.coupling, self.summary, self.path = name, coupling, summary, path
        self.requires = ("ot",) if coupling == "ot" else ()

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        from ..adapters.flow_matching import FlowMatchingModel, fit_flow_matching

        x, x_sel = self.selection_split(x, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FlowMatchingModel(x.shape[1], path=self.path).to(x.device)
        history = fit_flow_matching(
            model,
            x,
            coupling=self.coupling,
            steps=budget.steps,
            budget_seconds=budget.seconds,
            batch_size=min(BATCH_SIZE, x.shape[0]),
            lr=PEER_LR,
            seed=seed,
            x_val=x_sel,
        )
        return TrainedModel(
            model,
            lambda n, gen: model.sample(n, steps=FM_SAMPLE_STEPS, solver=FM_SAMPLE_SOLVER, generator=gen),
            lambda xb: model.log_prob(xb, steps=FM_NLL_STEPS, solver="rk4"),
            solver_nfe(FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER),
            history.seconds,
            history.steps,
            {
                "sample_solver": f"{FM_SAMPLE_STEPS} x {FM_SAMPLE_SOLVER}",
                "nll_solver": f"{FM_NLL_STEPS} x rk4",
                "path": self.path,
                **selection_details(x_sel, history.best_step, "validation flow-matching loss"),
            },
            velocity=model,
            generate=lambda z: model.sample(
                z.shape[0], steps=FM_SAMPLE_STEPS, solver=FM_SAMPLE_SOLVER, latents=z
            ),
        )


class PeerFlowMatchingMethod(Method):
    """Flow matching trained by a real peer library (``adapters.peers``): torchcfm's matchers or Meta
    ``flow_matching``'s ``CondOTProbPath``, on the same MLP, budget, batch and learning rate as
    ``cfm``. torchcfm's model is sampled and scored by our ODE code (12 RK4 / 64 RK4 steps, as
    ``cfm``); ``flow_matching``'s by its own ``ODESolver`` (``sample``, ``compute_likelihood``)
    with the same fixed RK4 grids. As ``cfm``, the checkpoint with the lowest validation
    flow-matching loss is kept.
    """

    def __init__(self, name: str, library: str, summary: str, *, ot: bool = False) -> None:
        self.name, self.library, self.summary, self.ot = name, library, summary, ot
        self.requires = (library,)

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        from ..adapters import peers
        from ..adapters.flow_matching import FlowMatchingModel

        self.check_available()
        x, x_sel = self.selection_split(x, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FlowMatchingModel(x.shape[1]).to(x.device)
        common = dict(
            steps=budget.steps,
            budget_seconds=budget.seconds,
            batch_size=min(BATCH_SIZE, x.shape[0]),
            lr=PEER_LR,
            seed=seed,
            x_val=x_sel,
        )
        details = {"library": self.library, "sample_solver": f"{FM_SAMPLE_STEPS} x rk4"}
        if self.library == "torchcfm":
            history = peers.fit_torchcfm(model, x, ot=self.ot, **common)
            sample = lambda n, gen: model.sample(n, steps=FM_SAMPLE_STEPS, solver="rk4", generator=gen)  # noqa: E731
            log_prob = lambda xb: model.log_prob(xb, steps=FM_NLL_STEPS, solver="rk4")  # noqa: E731
        else:
            history = peers.fit_flow_matching_lib(model, x, **common)
            sample = lambda n, gen: peers.flow_matching_sample(model, n, steps=FM_SAMPLE_STEPS, generator=gen)  # noqa: E731
            log_prob = lambda xb: peers.flow_matching_log_prob(model, xb, steps=FM_NLL_STEPS)  # noqa: E731
        details["nll_solver"] = f"{FM_NLL_STEPS} x rk4, exact divergence"
        details.update(selection_details(x_sel, history.best_step, "validation flow-matching loss"))
        nfe = solver_nfe(FM_SAMPLE_STEPS, "rk4")
        return TrainedModel(model, sample, log_prob, nfe, history.seconds, history.steps, details)


class NormflowsMethod(Method):
    """A normflows baseline (``adapters.normflows_baselines``) trained by maximum likelihood; the
    checkpoint with the lowest validation NLL is kept."""

    def __init__(self, name: str, summary: str) -> None:
        self.name, self.summary = name, summary

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        from ..adapters.normflows_baselines import fit_maximum_likelihood, make_baseline, sample_flow

        x, x_sel = self.selection_split(x, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = make_baseline(self.name, x.shape[1]).to(x.device)
        history = fit_maximum_likelihood(
            flow,
            x,
            steps=budget.steps,
            budget_seconds=budget.seconds,
            batch_size=min(BATCH_SIZE, x.shape[0]),
            lr=PEER_LR,
            seed=seed,
            x_val=x_sel,
        )
        return TrainedModel(
            flow,
            lambda n, gen: sample_flow(flow, n, generator=gen),
            flow.log_prob,
            flow_nfe(flow),
            history.seconds,
            history.steps,
            selection_details(x_sel, history.best_step, "validation NLL"),
            generate=_latents_to_samples(flow),
        )


#: The methods ``compare`` knows, in their default order.
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        JKOMethod("jko", "ode", "JKO flow of ODE blocks (6 blocks, 3 RK4 steps each)"),
        JKOMethod("jko-spline", "spline", "JKO flow of spline steps (4 steps of 2 layers)"),
        JKOMethod(
            "jko-coupling",
            "coupling",
            "JKO flow of coupling spline steps (4 steps: an LU map, 2 coupling layers)",
        ),
        JKOMethod(
            "jko-spline-64",
            "spline",
            "JKO flow of spline steps with 64 bins per spline, step 1 given 3 shares of the budget "
            "and splines on [-3, 3] (detailed 2-D pictures, budgets of minutes)",
            spline_bins=64,
            first_share=3.0,
            first_tail_bound=3.0,
        ),
        JKOMethod(
            "jko-grid",
            "grid",
            "JKO flow of 2-D spline steps conditioned through a table over the other coordinate, "
            "batches of 1,024 (2-D pictures, budgets of minutes)",
            batch_size=1024,
        ),
        FlowMatchingMethod("cfm", "independent", "flow matching, linear path (I-CFM / rectified flow)"),
        FlowMatchingMethod("otcfm", "ot", "flow matching with exact minibatch OT coupling (OT-CFM)"),
        NormflowsMethod("realnvp", "normflows RealNVP, maximum likelihood"),
        NormflowsMethod("nsf", "normflows neural spline flow, maximum likelihood"),
        FlowMatchingMethod("trig", "independent", "flow matching, trigonometric path", path="trig"),
        FlowMatchingMethod("vp", "independent", "flow matching, VP path, cosine schedule", path="vp"),
        FlowMatchingMethod(
            "vp-linear", "independent", "flow matching, VP path, linear beta schedule", path="vp-linear"
        ),
        PeerFlowMatchingMethod("torchcfm", "torchcfm", "torchcfm's ConditionalFlowMatcher (I-CFM)"),
        PeerFlowMatchingMethod(
            "torchcfm-ot", "torchcfm", "torchcfm's ExactOptimalTransportConditionalFlowMatcher", ot=True
        ),
        PeerFlowMatchingMethod(
            "flow_matching", "flow_matching", "Meta flow_matching: CondOTProbPath, ODESolver"
        ),
    )
}
#: The default comparison: the six methods of the first comparison, which need nothing beyond the
#: base install. The coupling JKO flow, the finer spline steps (``jko-spline-64``), the other
#: Gaussian interpolants (``trig``, ``vp``, ``vp-linear``; ``cfm`` is the linear one) and the real
#: peers (extras) are asked for by name: each costs one more training budget, and the default
#: tables stay comparable with earlier runs.
DEFAULT_METHODS = "jko,jko-spline,cfm,otcfm,realnvp,nsf"
