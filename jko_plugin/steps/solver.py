r"""The solver steps an ODE block integrates with, changed for a while: ``solver_steps`` (every
block of a flow) and ``ode_density_of`` (the ODE's own density where a block integrates its
divergence), both on ``blocks_with_steps``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import normflows as nf
from torch import nn

from .._ops import NLL_SOLVER_STEPS
from .._validate import positive_int
from .block import JKOBlock

__all__ = ["blocks_with_steps", "integrates_divergence", "ode_density_of", "solver_steps"]


@contextmanager
def solver_steps(flow: nf.NormalizingFlow, steps: int) -> Iterator[nf.NormalizingFlow]:
    """Integrate every ``JKOBlock`` of ``flow`` with ``steps`` solver steps inside the block.

    A block's log-determinant is the divergence integrated along the solver's trajectory: exact
    for the ODE, approximate for the few-step map the block was trained with. Once training has
    sharpened the velocity, that gap shows (a two-moons density integrating to 1.02 over the
    plane with 2 RK4 steps per block, to 1.0000 with 8); a finer solver evaluates the ODE's own,
    normalised density::

        with solver_steps(flow, 8):
            nll = -flow.log_prob(x_test).mean()
    """
    positive_int("steps", steps)
    with blocks_with_steps([f for f in flow.flows if isinstance(f, JKOBlock)], steps):
        yield flow


@contextmanager
def blocks_with_steps(blocks: list[JKOBlock], steps: int) -> Iterator[None]:
    """Integrate each of ``blocks`` with ``steps`` solver steps, and give each its own back after
    (``solver_steps``, ``workflows.ode_density``)."""
    saved = [b.steps for b in blocks]
    for b in blocks:
        b.steps = steps
    try:
        yield
    finally:
        for b, n in zip(blocks, saved):
            b.steps = n


def integrates_divergence(layer: nn.Module) -> bool:
    """Whether ``layer`` is an ODE block whose log-det integrates its divergence with fewer
    solver steps than its ODE is scored with (``ode_density_of`` changes it)."""
    return _ode_density_block(layer) and layer.steps < NLL_SOLVER_STEPS


def _ode_density_block(layer: nn.Module) -> bool:
    return isinstance(layer, JKOBlock) and not layer.exact_map


@contextmanager
def ode_density_of(layers: Iterable[nn.Module]) -> Iterator[None]:
    """Give those of ``layers`` that are ODE blocks integrating their divergence
    (``density="ode"``) the ODE's own density for the duration: at least ``NLL_SOLVER_STEPS`` RK4
    steps each. Exact maps (``density="map"``, spline and coupling steps) are left as they are."""
    blocks = [f for f in layers if _ode_density_block(f)]
    with blocks_with_steps(blocks, max([NLL_SOLVER_STEPS] + [b.steps for b in blocks])):
        yield
