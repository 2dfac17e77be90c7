r"""jko-plugin: JKO flow models (block-wise Wasserstein proximal steps) for normflows and diffusers."""

from .datasets import load_dataset
from .metrics import mmd, nll, w2_floor, wasserstein2
from .sampling import JKOFlowModel, JKOFlowPipeline, JKOScheduler
from .schedule import StepSchedule
from .steps import (
    STEP_KINDS,
    JKOBlock,
    JKOStep,
    ProximalStep,
    VelocityMLP,
    jko_steps,
    make_flow,
    solver_steps,
)
from .training import (
    CheckpointError,
    JKOTrainer,
    TimeBudget,
    TrainerOptions,
    TrainingDiverged,
    TrainingHistory,
)

__version__ = "0.1.0"

__all__ = [
    "STEP_KINDS",
    "CheckpointError",
    "JKOBlock",
    "JKOFlowModel",
    "JKOFlowPipeline",
    "JKOScheduler",
    "JKOStep",
    "JKOTrainer",
    "ProximalStep",
    "StepSchedule",
    "TimeBudget",
    "TrainerOptions",
    "TrainingDiverged",
    "TrainingHistory",
    "VelocityMLP",
    "jko_steps",
    "load_dataset",
    "make_flow",
    "mmd",
    "nll",
    "solver_steps",
    "w2_floor",
    "wasserstein2",
    "__version__",
]
