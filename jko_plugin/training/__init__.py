r"""Block-wise JKO training: trainer, options, budgets, flow surgery, checkpoints, torch.distributed."""

from .budget import FixedIterations, IterationCosts, IterationPlan, TimeBudget
from .checkpoint import CheckpointError
from .distributed import DistributedError
from .history import BlockRecord, StepEvent, TrainingHistory
from .options import TrainerOptions, TrainingDiverged
from .tracking import TensorBoardLogger
from .trainer import JKOTrainer

__all__ = [
    "BlockRecord",
    "CheckpointError",
    "DistributedError",
    "FixedIterations",
    "IterationCosts",
    "IterationPlan",
    "JKOTrainer",
    "StepEvent",
    "TensorBoardLogger",
    "TimeBudget",
    "TrainerOptions",
    "TrainingDiverged",
    "TrainingHistory",
]
