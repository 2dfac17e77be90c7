r"""How every method of a comparison chooses: on rows held out of its training points, never on
the points it is scored on (``selection_rows``); how a JKO row trains with those choices
(``fit_selected_jko``); what a peer reports of its choice (``selection_details``)."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..datasets.files import validation_split
from ..training.budget import FixedIterations, TimeBudget
from ..training.history import TrainingHistory
from ..workflows import RunConfig, build_flow, make_trainer

if TYPE_CHECKING:
    from .base import Budget

__all__ = ["fit_selected_jko", "selection_details", "selection_rows"]


def selection_rows(
    x: Tensor, seed: int, context: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(x_fit, x_sel, context_fit, context_sel)``: the rows every method of a ``compare`` run (and
    of ``compare_conditional``, with the labels as ``context``) trains on and makes its choices on,
    the same for every method of a seed (``validation_split`` seeded by ``seed + 1``)."""
    return validation_split(x, seed + 1, context)


def fit_selected_jko(
    config: RunConfig,
    x: Tensor,
    x_sel: Tensor,
    budget: Budget,
    start: float,
    context: Tensor | None = None,
    context_sel: Tensor | None = None,
) -> tuple[nn.Module, TrainingHistory, dict]:
    """How both comparisons train a JKO row: ``config``'s flow fitted on ``x`` within ``budget``
    (a ``TimeBudget`` counted from ``start``, or ``budget.steps`` shared by the blocks), each step
    keeping its best iterate on ``x_sel`` and the flow cut after its best step there
    (``keep_best``). Returns the flow, the history and the details the rows report."""
    config = dataclasses.replace(config, keep_best=True)
    flow = build_flow(config, x.shape[1]).to(x.device)
    trainer = make_trainer(config, flow, x.shape[0], progress=False, device=str(x.device))
    contexts = {"context": context, "context_val": context_sel}
    details: dict = {"num_blocks": config.num_blocks, "step_sizes": config.step_sizes}
    if budget.steps is not None:
        plan = FixedIterations(max(1, budget.steps // config.num_blocks))
    else:
        costs = trainer.estimate_costs(x, x_sel, **contexts)
        details.update(
            calibration_seconds=time.perf_counter() - start,
            calibrated_seconds_per_iteration=costs.per_iteration,
            block_overhead_seconds=costs.per_block,
            fit_overhead_seconds=costs.per_fit,
        )
        plan = TimeBudget(
            budget.seconds, costs, config.num_blocks, start=start, weights=config.budget_weights
        )
    history = trainer.fit(x, x_sel, plan=plan, **contexts)
    kept = trainer.keep_best_steps()
    details.update(
        iterations_per_block=[b.iterations for b in history.blocks],
        validation_nll_per_block=[b.nll for b in history.blocks],
        validation_points=int(x_sel.shape[0]),
        kept_steps=kept,
        kept_iterations_per_block=[b.kept_iteration for b in history.blocks],
    )
    return flow, history, details


def selection_details(x_sel: Tensor, best_step: int | None, score: str) -> dict:
    """The details of a peer's checkpoint selection, chosen on ``Method.selection_split``'s rows
    as a JKO row's number of steps is."""
    return {"validation_points": int(x_sel.shape[0]), "best_step": best_step, "selection": score}
