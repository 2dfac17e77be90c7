r"""The options of ``JKOTrainer``: one frozen dataclass, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import choice, positive, positive_int
from .distributed import BACKENDS

__all__ = [
    "ADAPTATIONS",
    "LR_SCHEDULES",
    "MODEL_OPTIONS",
    "OPTIMIZERS",
    "TRANSPORT_COSTS",
    "TrainerOptions",
    "TrainingDiverged",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
LR_SCHEDULES = ("cosine", "constant")
TRANSPORT_COSTS = ("displacement", "kinetic")
ADAPTATIONS = ("reparametrize", "refine")
# Options that change the trained model; a checkpoint made with other values is another model's.
MODEL_OPTIONS = (
    "iterations",
    "batch_size",
    "optimizer",
    "lr",
    "lr_schedule",
    "weight_decay",
    "grad_clip",
    "warm_start",
    "transport_cost",
    "tol",
    "max_blocks",
    "growth",
    "stop_early",
    "seed",
    "adapt",
    "step_checks",
    "step_patience",
    "ema",
)


class TrainingDiverged(RuntimeError):
    """The loss of a block became NaN or infinite; earlier checkpoints are left untouched."""


@dataclass(frozen=True)
class TrainerOptions:
    """Options of ``JKOTrainer`` (all keyword arguments of its constructor).

    Attributes:
        iterations: Gradient steps per block.
        batch_size: Mini-batch size; the data must hold at least this many points. Under
            ``torchrun`` this is the global batch: each of the ``W`` ranks draws
            ``batch_size / W`` points from its shard (``batch_size`` must be divisible by ``W``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: Learning rate.
        lr_schedule: ``"cosine"`` (decay to 0 within each block) or ``"constant"``.
        weight_decay: Optimizer weight decay.
        grad_clip: Max gradient norm, or ``None``.
        warm_start: Start each block from the previous block's weights (same architecture).
        transport_cost: ``"displacement"``, ``E|T(x) - x|^2 / (2h)``, or ``"kinetic"``,
            ``(t1 - t0) * E int |f|^2 dt / (2h)`` (an upper bound; ODE blocks only, spline steps
            fall back to the displacement).
        tol: Stopping rule: converged once ``E|T(x)-x|^2 / E|T(x)|^2 < tol``.
        max_blocks: Append blocks (like the last one, step size times ``growth``) while not
            converged, up to this many JKO steps in all. ``None``: train the given steps only.
        growth: Step-size ratio for appended blocks; default the scheduler's ``growth`` or 1.
        stop_early: Once converged, drop the JKO steps not yet trained instead of training them.
        seed: Seed of batches, probes and initialisation of appended blocks: same seed, same model.
        adapt: Schedule adaptations applied after the first pass, in order, each followed by
            retraining every block from a fresh start (JKO-iFlow): ``"reparametrize"`` re-spaces
            the steps so that each block moves the same W2 distance
            (``JKOScheduler.reparametrize``), ``"refine"`` halves every step (twice the blocks,
            ``JKOScheduler.refine``). ODE blocks only; not combined with checkpoints.
        step_checks: Within-step early stopping: measure each step's proximal loss on ``x_val``
            before training and this many times during it, and keep the best iterate. ``x_val``
            must then be a validation split, never the points the model is scored on. 0: keep
            the last iterate. An ODE block trained on a few-step log-det (``density="ode"``) is
            checked on it, and the winner rescored on the ODE's density (``checks.py``).
        step_patience: With ``step_checks``: stop a step's training after this many checks in a
            row without a better score, and give the time left to the blocks after it (under a
            ``TimeBudget``). 0: train every planned iteration.
        ema: Decay of an exponential moving average of each step's weights
            (``torch.optim.swa_utils``' EMA), updated after every iteration: the average, not the
            last iterate, is what the checks score and what the step keeps. 0: no average. Off
            by default: on gmm16 at 120 s decay 0.99 tied and 0.999 lost 0.77 nats (an average as
            long as a step reaches back to its start; BENCHMARKS.md s.4.0).
        compile: Train each step through ``torch.compile`` (its transport and loss, forward and
            backward): 1.2-2.2x faster iterations on CPU after a one-off compilation (35-80 s the
            first time; inductor's on-disk cache makes later runs start in seconds).
            Steps of one architecture share the compiled graph. One process only (ignored under
            ``torchrun``); the model is the same, so it is not a model option.
        device: Device to train on (default: where the flow's parameters are).
        chunk_size: Rows per chunk when pushing data through trained blocks (bounds memory).
        eval_size: Held-out points used for the per-block NLL, KL estimate and inversion error.
        progress: Show a tqdm bar per block and print the summary table (rank 0 only).
        backend: Distributed backend when launched by ``torchrun`` (``WORLD_SIZE > 1``):
            ``"gloo"``, ``"nccl"``, or ``None``: NCCL when training on CUDA, gloo on CPU. A
            process group the caller initialised is used as it is.
        dist_timeout: Seconds a collective waits for the other ranks before the run stops with
            ``DistributedError`` (a rank that died never leaves the others hanging).
    """

    iterations: int = 300
    batch_size: int = 512
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    warm_start: bool = False
    transport_cost: str = "displacement"
    tol: float = 0.01
    max_blocks: int | None = None
    growth: float | None = None
    stop_early: bool = False
    seed: int = 0
    adapt: tuple[str, ...] = ()
    step_checks: int = 0
    step_patience: int = 0
    ema: float = 0.0
    compile: bool = False
    device: str | None = None
    chunk_size: int = 8192
    eval_size: int = 2000
    progress: bool = True
    backend: str | None = None
    dist_timeout: float = 600.0

    def model_dict(self) -> dict:
        """The options in ``MODEL_OPTIONS`` as JSON gives them back (tuples as lists), so that the
        options saved in a checkpoint and a live trainer's compare equal."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(self, k)) for k in MODEL_OPTIONS)
        }

    def __post_init__(self) -> None:
        if self.backend is not None:
            choice("backend", self.backend, BACKENDS)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        choice("transport_cost", self.transport_cost, TRANSPORT_COSTS)
        if isinstance(self.adapt, str):
            object.__setattr__(self, "adapt", (self.adapt,))
        object.__setattr__(self, "adapt", tuple(self.adapt))
        for a in self.adapt:
            choice("adapt", a, ADAPTATIONS)
        for name in ("iterations", "batch_size", "chunk_size", "eval_size"):
            positive_int(name, getattr(self, name))
        for name in ("lr", "tol", "dist_timeout"):
            positive(name, getattr(self, name))
        for name in ("grad_clip", "growth"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        positive_int("step_checks", self.step_checks, minimum=0)
        positive_int("step_patience", self.step_patience, minimum=0)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema is a decay in [0, 1) (0: no average), got {self.ema}")
        if self.step_patience and not self.step_checks:
            raise ValueError("step_patience counts step_checks without improvement: set step_checks too")
        if self.max_blocks is not None:
            positive_int("max_blocks", self.max_blocks)
