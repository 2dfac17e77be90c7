r"""The comparison's peers: flow matching (ours and the real libraries') and normflows baselines."""

from __future__ import annotations

from torch import Tensor

from .._ops import solver_nfe
from ..steps.layers import flow_nfe
from .base import (
    FM_NLL_STEPS,
    FM_SAMPLE_SOLVER,
    FM_SAMPLE_STEPS,
    Budget,
    Method,
    TrainedModel,
    _latents_to_samples,
    peer_training,
    seeded,
)
from .selection import selection_details

__all__ = ["FlowMatchingMethod", "NormflowsMethod", "PeerFlowMatchingMethod"]


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
        model = seeded(lambda: FlowMatchingModel(x.shape[1], path=self.path).to(x.device), seed)
        history = fit_flow_matching(model, x, coupling=self.coupling, **peer_training(budget, x, x_sel, seed))
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
        model = seeded(lambda: FlowMatchingModel(x.shape[1]).to(x.device), seed)
        common = peer_training(budget, x, x_sel, seed)
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
        flow = seeded(lambda: make_baseline(self.name, x.shape[1]).to(x.device), seed)
        history = fit_maximum_likelihood(flow, x, **peer_training(budget, x, x_sel, seed))
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
