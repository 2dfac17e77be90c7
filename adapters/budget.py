r"""The peers' training loop: Adam under a budget of gradient steps and/or wall-clock seconds."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from jko_plugin._validate import choice, positive, positive_int

__all__ = [
    "LR_SCHEDULES",
    "FitHistory",
    "TrainingBudget",
    "check_validation_rows",
    "fit_budgeted",
    "lr_factor",
]

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


def check_validation_rows(x_val: Tensor, dim: int) -> None:
    """Raise ``ValueError`` unless ``x_val`` holds at least one row of dimension ``dim``: checked
    before training, so that a bad validation set fails at once, not at the first check."""
    if x_val.dim() != 2 or x_val.shape[1] != dim or x_val.shape[0] == 0:
        raise ValueError(f"x_val must have shape (m, {dim}), got {tuple(x_val.shape)}")


def lr_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@dataclass
class FitHistory:
    """What a training run did: gradient steps, seconds, the loss every ``log_every`` steps, and
    with a ``validate`` function its ``(step, score)`` checks and the step whose state was kept
    (``best_step``; ``None`` without checks or when no score was finite)."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seconds": self.seconds,
            "losses": [list(p) for p in self.losses],
            "validation": [list(p) for p in self.validation],
            "best_step": self.best_step,
        }


class _Selection:
    """Scores ``model`` with ``validate`` (no grad, eval mode) and keeps a copy of its best state."""

    def __init__(self, model: nn.Module, validate: Callable[[], float], history: FitHistory) -> None:
        self.model, self.validate, self.history = model, validate, history
        self.best_score, self.best_state = math.inf, None

    def check(self) -> None:
        self.model.eval()
        with torch.no_grad():
            score = float(self.validate())
        self.model.train()
        self.history.validation.append((self.history.steps, score))
        if math.isfinite(score) and score < self.best_score:  # NaN and inf never count as best
            self.best_score, self.history.best_step = score, self.history.steps
            self.best_state = copy.deepcopy(self.model.state_dict())  # detached tensors, cloned

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


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
    validate: Callable[[], float] | None = None,
    checks: int = 20,
) -> FitHistory:
    """Minimise ``batch_loss()`` (a fresh minibatch each call) over ``model``'s parameters with Adam
    until ``budget`` is spent. A step whose loss is not finite is counted but not applied.
    Leaves ``model`` in eval mode.

    With ``validate`` (a score of the current model, lower is better, e.g. a validation NLL) the
    model is scored whenever the budget's progress crosses ``k / checks`` (``k = 1..checks``) and
    once at the very end, under ``torch.no_grad()`` in eval mode; the state with the best finite
    score is restored at the end (``history.best_step``). Scoring happens inside the budget's
    clock, so it costs training time. Without ``validate`` nothing changes.
    """
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    positive_int("checks", checks)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = FitHistory()
    selection = None if validate is None else _Selection(model, validate, history)
    next_check = 1  # the next k whose progress k / checks triggers a check
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
        if selection is not None:
            progress = budget.progress(history.steps, time.perf_counter() - start)
            if next_check <= checks and progress >= next_check / checks:
                selection.check()
                while next_check <= checks and progress >= next_check / checks:
                    next_check += 1
    if selection is not None:
        if not history.validation or history.validation[-1][0] != history.steps:
            selection.check()  # the very end, if the last crossing was not the last step
        selection.restore()
    history.seconds = time.perf_counter() - start
    model.eval()
    return history
