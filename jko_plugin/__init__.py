r"""jko-plugin: JKO flow models (block-wise Wasserstein proximal steps) for normflows and diffusers."""

from .block import JKOBlock, Transport
from .checkpoint import CheckpointError
from .datasets import GaussianMixture, load_dataset, load_maf, load_samples
from .distributed import DistributedError
from .flows import jko_steps, make_flow, make_spline_step
from .history import BlockRecord, TrainingHistory
from .model import JKOFlowModel
from .pipeline import JKOFlowPipeline, JKOFlowPipelineOutput
from .scheduler import JKOScheduler, JKOSchedulerOutput
from .step import JKOStep
from .trainer import JKOTrainer, TrainerOptions, TrainingDiverged
from .velocity import VelocityMLP

__version__ = "0.1.0"

__all__ = [
    "BlockRecord",
    "CheckpointError",
    "DistributedError",
    "GaussianMixture",
    "JKOBlock",
    "JKOFlowModel",
    "JKOFlowPipeline",
    "JKOFlowPipelineOutput",
    "JKOScheduler",
    "JKOSchedulerOutput",
    "JKOStep",
    "JKOTrainer",
    "TrainerOptions",
    "TrainingDiverged",
    "TrainingHistory",
    "Transport",
    "VelocityMLP",
    "jko_steps",
    "load_dataset",
    "load_maf",
    "load_samples",
    "make_flow",
    "make_spline_step",
    "__version__",
]
