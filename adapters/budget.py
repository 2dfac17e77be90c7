r"""The peers' training loop: Adam under a budget of gradient steps and/or wall-clock seconds."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from jko_plugin._validate import choice, positive, positive_int

__all__ = ["LR_SCHEDULES", "FitHistory", "TrainingBudget", "fit_budgeted", "lr_factor"]

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainingBudget:
    """Stop training after ``steps`` gradient steps or ``seconds`` of wall clock, whichever comes first.

    ``progress(step, elapsed)`` in [0, 1] drives learning-rate schedules, so a cosine decay ends
    at the end of the budget whichever way it is given.
    """

    steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("give a training budget: steps or seconds (or both), got neither")
        if self.steps is not None:
            positive_int("steps", self.steps)
        if self.seconds is not None:
            positive("seconds", self.seconds)

    def progress(self, step: int, elapsed: float) -> float:
        parts = []
        if self.steps is not None:
            parts.append(step / self.steps)
        if self.seconds is not None:
            parts.append(elapsed / self.seconds)
        return min(1.0, max(parts))

    def done(self, step: int, elapsed: float) -> bool:
        return self.progress(step, elapsed) >= 1.0


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@dataclass
class FitHistory:
    """What a training run did: gradient steps, seconds, and the loss every ``log_every`` steps."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "losses": [list(p) for p in self.losses]}


def fit_budgeted(
    model: nn.Module,
    batch_loss: Callable[[], Tensor],
    budget: TrainingBudget,
    *,
    lr: float,
    lr_schedule: str = "cosine",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    log_every: int = 100,
) -> FitHistory:
    """Minimise ``batch_loss()`` (a fresh minibatch each call) over ``model``'s parameters with Adam
    until ``budget`` is spent. A step whose loss is not finite is counted but not applied.
    Leaves ``model`` in eval mode."""
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = FitHistory()
    model.train()
    start = time.perf_counter()
    while not budget.done(history.steps, time.perf_counter() - start):
        progress = budget.progress(history.steps, time.perf_counter() - start)
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(lr_schedule, progress)
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
        history.steps += 1
        if history.steps % log_every == 0 or history.steps == 1:
            history.losses.append((history.steps, float(loss.detach())))
    history.seconds = time.perf_counter() - start
    model.eval()
    return history
