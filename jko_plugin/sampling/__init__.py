r"""The diffusers side: ``JKOScheduler``, ``JKOFlowModel``, ``JKOFlowPipeline``, and generic ODE sampling."""

from .model import JKOFlowModel
from .ode import ode_log_prob, sample_ode
from .pipeline import JKOFlowPipeline, JKOFlowPipelineOutput
from .scheduler import JKOScheduler, JKOSchedulerOutput

__all__ = [
    "JKOFlowModel",
    "JKOFlowPipeline",
    "JKOFlowPipelineOutput",
    "JKOScheduler",
    "JKOSchedulerOutput",
    "ode_log_prob",
    "sample_ode",
]
