r"""Thin glue between jko-plugin and the libraries around it, installed as ``jko_plugin.adapters``.

Flow-matching peers of our own, normflows baselines, and an evaluator for external velocity
models (torchcfm, Meta's flow_matching), which stay optional.
"""

from jko_plugin.adapters.external import ExternalVelocity
from jko_plugin.adapters.flow_matching import (
    FlowMatchingModel,
    TrainingBudget,
    fit_flow_matching,
    sample_with_scheduler,
)
from jko_plugin.adapters.normflows_baselines import (
    fit_maximum_likelihood,
    make_nsf,
    make_realnvp,
    sample_flow,
)

__all__ = [
    "ExternalVelocity",
    "FlowMatchingModel",
    "TrainingBudget",
    "fit_flow_matching",
    "fit_maximum_likelihood",
    "make_nsf",
    "make_realnvp",
    "sample_flow",
    "sample_with_scheduler",
]
