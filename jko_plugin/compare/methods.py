r"""The comparison's methods: each trains within a budget, samples, scores log-prob and counts NFE.
JKO flows here, the peers in ``peer_methods``; ``METHODS`` is the registry of all."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from torch import Tensor, nn

from ..steps.block import JKOBlock
from ..steps.layers import flow_nfe
from ..workflows import (
    NLL_SOLVER_STEPS,
    RunConfig,
    default_config,
    ode_density,
    solver_gap,
)
from .base import Budget, Method, TrainedModel, _latents_to_samples
from .peer_methods import FlowMatchingMethod, NormflowsMethod, PeerFlowMatchingMethod
from .selection import fit_selected_jko

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "Budget",
    "FlowMatchingMethod",
    "JKOMethod",
    "JKOMixtureMethod",
    "Method",
    "NormflowsMethod",
    "PeerFlowMatchingMethod",
    "TrainedModel",
]


def _on_ode_density(flow: nn.Module, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` called with ``flow``'s ODE blocks on the ODE's own density (``ode_density``): how a
    JKO row is scored and sampled, one map for both."""

    def on_ode_density(*args: object) -> Tensor:
        with ode_density(flow):
            return fn(*args)

    return on_ode_density


def _scored_map(flow: nn.Module, config: RunConfig, x_sel: Tensor, context_sel: Tensor | None = None) -> dict:
    """What a JKO row with ODE blocks says of the map it scores and samples (none without them):
    the trace, the density, the map, and where that is the ODE's, how far the trained steps'
    log-det strays from it on the selection rows (``solver_gap``)."""
    blocks = [f for f in flow.flows if isinstance(f, JKOBlock)]
    if not blocks:
        return {}
    exact = all(b.exact_map for b in blocks)
    details = dict(
        trace=config.trace,
        density="exact map (solver map's own Jacobian)" if exact else "ODE divergence",
        scored_map=(
            f"the trained map: {blocks[0].steps} x {blocks[0].solver} per block, Newton inverse"
            if exact
            else f"{NLL_SOLVER_STEPS} x {config.num_blocks} x rk4 for NLL and samples"
        ),
    )
    if not exact:
        details["solver_gap"] = solver_gap(flow, x_sel, context_sel)
    return details


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
        log_prob = _on_ode_density(flow, flow.log_prob)
        sample = _on_ode_density(flow, lambda n, gen: sample_flow(flow, n, generator=gen))
        with ode_density(flow):
            nfe = flow_nfe(flow)
        fast_nfe = flow_nfe(flow)
        details.update(_scored_map(flow, config, x_sel))
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


class JKOMixtureMethod(JKOMethod):
    """``ClusterMixtureFlow``, ``p(x) = sum_k w_k q(x | k)``: a JKO flow of the kind ``block``
    conditional on the training points' clusters, each cluster standardised on its own
    (``find_clusters``: their number chosen on the selection rows, within the budget). Trained,
    cut and scored as ``JKOMethod``'s flow, with each point's cluster as its label."""

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        from ..mixture import find_clusters

        start = time.perf_counter()
        x, x_sel = self.selection_split(x, seed)
        clusters = find_clusters(x, x_sel, seed=seed)
        labels, labels_sel, k = clusters.labels, clusters.labels_sel, clusters.num_clusters
        config = dataclasses.replace(self.config(x.shape[1], seed), compile=budget.compile, num_classes=k)
        z, z_sel = clusters.standardized(x, labels), clusters.standardized(x_sel, labels_sel)
        flow, _, details = fit_selected_jko(config, z, z_sel, budget, start, labels, labels_sel)
        seconds = time.perf_counter() - start
        model = clusters.mixture(flow)
        details.update(
            compiled=config.compile,
            clusters=k,
            cluster_weights=model.log_weights.exp().tolist(),
            cluster_selection_nll={str(c): v for c, v in clusters.selection_nll.items()},
            **_scored_map(flow, config, z_sel, labels_sel),
        )

        log_prob = _on_ode_density(flow, model.log_prob)
        sample = _on_ode_density(flow, lambda n, gen: model.sample(n, generator=gen)[0])
        with ode_density(flow):
            nfe = flow_nfe(flow)
        return TrainedModel(
            model, sample, log_prob, nfe, seconds, sum(details["iterations_per_block"]), details
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
        JKOMixtureMethod(
            "jko-mixture",
            "ode",
            "JKO flow of ODE blocks conditional on the data's clusters (a Gaussian mixture's, "
            "their number chosen on the selection rows): p(x) = sum_k w_k q(x | k)",
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
