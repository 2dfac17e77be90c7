r"""The diffusers side: JKO scheduler, model and pipeline, flow maps, generic ODE sampling."""

from .field import VelocityField
from .flowmap import FlowMapModel
from .flowmap_scheduler import FlowMapScheduler, FlowMapSchedulerOutput
from .model import JKOFlowModel
from .ode import ode_log_prob, sample_ode
from .pipeline import JKOFlowPipeline, JKOFlowPipelineOutput
from .scheduler import JKOScheduler, JKOSchedulerOutput

__all__ = [
    "FlowMapModel",
    "FlowMapScheduler",
    "FlowMapSchedulerOutput",
    "JKOFlowModel",
    "JKOFlowPipeline",
    "JKOFlowPipelineOutput",
    "JKOScheduler",
    "JKOSchedulerOutput",
    "VelocityField",
    "ode_log_prob",
    "sample_ode",
]
