r"""jko-plugin: JKO flow models (block-wise Wasserstein proximal steps) for normflows and diffusers."""

from .block import JKOBlock, Transport
from .checkpoint import CheckpointError
from .datasets import GaussianMixture, load_dataset, load_maf, load_samples
from .distributed import DistributedError
from .flows import jko_steps, make_flow, make_spline_step, solver_steps
from .history import BlockRecord, TrainingHistory
from .metrics import (
    SinkhornResult,
    bits_per_dim,
    inversion_error,
    mmd,
    nll,
    sinkhorn,
    sinkhorn_divergence,
    w2_floor,
    wasserstein2,
)
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
    "SinkhornResult",
    "TrainerOptions",
    "TrainingDiverged",
    "TrainingHistory",
    "Transport",
    "VelocityMLP",
    "bits_per_dim",
    "inversion_error",
    "jko_steps",
    "solver_steps",
    "load_dataset",
    "load_maf",
    "load_samples",
    "make_flow",
    "make_spline_step",
    "mmd",
    "nll",
    "sinkhorn",
    "sinkhorn_divergence",
    "w2_floor",
    "wasserstein2",
    "__version__",
]
