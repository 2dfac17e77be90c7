r"""JKO steps: the ``ProximalStep`` contract, ODE blocks, map steps of normflows layers, their registry."""

from .._ops import DEFAULT_SOLVER_STEPS
from .base import BLOCK_TYPES, ProximalStep, Transport
from .block import JKOBlock
from .kinds import (
    DEFAULT_STEP_KIND,
    STEP_KINDS,
    StepKind,
    jko_steps,
    make_flow,
    make_spline_step,
    solver_steps,
)
from .layers import LAYER_TYPES, build_layer, describe_layer, flow_nfe
from .map import JKOStep
from .velocity import VelocityMLP

__all__ = [
    "BLOCK_TYPES",
    "DEFAULT_SOLVER_STEPS",
    "DEFAULT_STEP_KIND",
    "LAYER_TYPES",
    "STEP_KINDS",
    "JKOBlock",
    "JKOStep",
    "ProximalStep",
    "StepKind",
    "Transport",
    "VelocityMLP",
    "build_layer",
    "describe_layer",
    "flow_nfe",
    "jko_steps",
    "make_flow",
    "make_spline_step",
    "solver_steps",
]
