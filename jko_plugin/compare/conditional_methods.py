r"""The methods that take class labels: JKO flows with conditional steps, and conditional flow matching."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._ops import solver_nfe
from ..adapters.normflows_baselines import base_latents
from ..steps.layers import flow_nfe
from ..workflows import ode_density
from .base import (
    FM_NLL_STEPS,
    FM_SAMPLE_SOLVER,
    FM_SAMPLE_STEPS,
    Budget,
    peer_training,
    seeded,
)
from .methods import METHODS
from .selection import fit_selected_jko, selection_details, selection_rows

__all__ = [
    "CONDITIONAL_METHODS",
    "DEFAULT_CONDITIONAL_METHODS",
    "ConditionalFlowMatching",
    "ConditionalJKO",
    "ConditionalMethod",
    "ConditionalModel",
]


@dataclass
class ConditionalModel:
    """A trained conditional method, ready to be scored.

    Attributes:
        module: The model (its trainable parameters are counted).
        sample: ``(labels (n,), generator) -> (n, d)``: one sample per label.
        log_prob: ``(x (n, d), labels (n,)) -> (n,)``: ``log p(x | label)``.
        nfe: Network evaluations per sample.
        train_seconds, train_steps: What training took.
        details: Method-specific figures.
    """

    module: nn.Module
    sample: Callable[[Tensor, torch.Generator], Tensor]
    log_prob: Callable[[Tensor, Tensor], Tensor]
    nfe: int
    train_seconds: float
    train_steps: int
    details: dict = field(default_factory=dict)


class ConditionalMethod:
    """A method that takes class labels: ``train(x, labels, x_val, labels_val, num_classes, budget, seed)``
    returns a ``ConditionalModel``."""

    name: str = ""
    summary: str = ""

    def train(
        self,
        x: Tensor,
        labels: Tensor,
        x_val: Tensor,
        labels_val: Tensor,
        num_classes: int,
        budget: Budget,
        seed: int,
    ) -> ConditionalModel:
        """Train on ``(x, labels)`` within ``budget``; choices (steps, checkpoints) are made on
        ``selection_rows`` of the training pairs, never on the held-out ``(x_val, labels_val)``."""
        raise NotImplementedError


class ConditionalJKO(ConditionalMethod):
    """The unconditional method ``METHODS[name]``'s JKO flow (same run settings), every step
    conditional on the label (``num_classes``), trained by ``JKOTrainer.fit(x, context=labels)``.
    As in ``compare``, each step keeps its best iterate on the ``selection_rows`` held out of the
    training pairs and the flow is cut after the step best on them."""

    def __init__(self, name: str) -> None:
        self.name, self.summary = name, METHODS[name].summary + ", class-conditional"

    def train(
        self,
        x: Tensor,
        labels: Tensor,
        x_val: Tensor,
        labels_val: Tensor,
        num_classes: int,
        budget: Budget,
        seed: int,
    ) -> ConditionalModel:
        # As the unconditional row: each step keeps its best iterate on the held-out selection
        # rows and the flow is cut after the step best on them (small classes overfit later steps).
        config = dataclasses.replace(METHODS[self.name].config(x.shape[1], seed), num_classes=num_classes)
        start = time.perf_counter()
        x, x_sel, labels, labels_sel = selection_rows(x, seed, labels)
        flow, history, details = fit_selected_jko(config, x, x_sel, budget, start, labels, labels_sel)
        seconds = time.perf_counter() - start

        def sample(c: Tensor, gen: torch.Generator) -> Tensor:
            with ode_density(flow):
                return flow.forward(base_latents(flow, len(c), generator=gen), context=c)

        def log_prob(xb: Tensor, c: Tensor) -> Tensor:
            with ode_density(flow):
                return flow.log_prob(xb, c)

        with ode_density(flow):
            nfe = flow_nfe(flow)
        details["block_kl_estimate"] = [b.kl_estimate for b in history.blocks]
        return ConditionalModel(
            flow, sample, log_prob, nfe, seconds, sum(details["iterations_per_block"]), details
        )


class ConditionalFlowMatching(ConditionalMethod):
    """Flow matching (linear path, independent coupling) with a label-conditional velocity
    ``v(x, sigma, c)`` (``FlowMatchingModel(num_classes=...)``), sampled with 12 RK4 steps; the
    checkpoint with the lowest flow-matching loss on ``selection_rows`` is kept, as ``cfm``'s."""

    name, summary = "cfm", "flow matching, linear path, class-conditional velocity"

    def train(
        self,
        x: Tensor,
        labels: Tensor,
        x_val: Tensor,
        labels_val: Tensor,
        num_classes: int,
        budget: Budget,
        seed: int,
    ) -> ConditionalModel:
        from ..adapters.flow_matching import FlowMatchingModel, fit_flow_matching

        x, x_sel, labels, labels_sel = selection_rows(x, seed, labels)
        model = seeded(lambda: FlowMatchingModel(x.shape[1], num_classes=num_classes), seed)
        history = fit_flow_matching(
            model, x, context=labels, context_val=labels_sel, **peer_training(budget, x, x_sel, seed)
        )
        return ConditionalModel(
            model,
            lambda c, gen: model.sample(
                len(c), steps=FM_SAMPLE_STEPS, solver=FM_SAMPLE_SOLVER, generator=gen, context=c
            ),
            lambda xb, c: model.log_prob(xb, steps=FM_NLL_STEPS, solver="rk4", context=c),
            solver_nfe(FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER),
            history.seconds,
            history.steps,
            {
                "sample_solver": f"{FM_SAMPLE_STEPS} x {FM_SAMPLE_SOLVER}",
                "nll_solver": f"{FM_NLL_STEPS} x rk4",
                **selection_details(x_sel, history.best_step, "validation flow-matching loss"),
            },
        )


#: The methods that take a context, by the name of their unconditional row in ``METHODS``.
CONDITIONAL_METHODS: dict[str, ConditionalMethod] = {
    m.name: m
    for m in (
        ConditionalJKO("jko"),
        ConditionalJKO("jko-spline"),
        ConditionalJKO("jko-coupling"),
        ConditionalFlowMatching(),
    )
}
DEFAULT_CONDITIONAL_METHODS = "jko,jko-spline,cfm"
