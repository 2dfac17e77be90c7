r"""Ready-made JKO flows: a stack of ODE blocks or of spline steps on a standard normal base."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import normflows as nf
import torch
from normflows.flows import Flow

from .block import JKOBlock
from .step import JKOStep

__all__ = ["BLOCK_KINDS", "make_flow", "make_spline_step", "jko_steps", "solver_steps"]

BLOCK_KINDS = ("ode", "spline")


def _reversal(dim: int) -> nf.flows.Permute:
    # Reversing the coordinates twice is the identity in any dimension, unlike normflows' "swap".
    perm = nf.flows.Permute(dim, mode="shuffle")
    with torch.no_grad():
        perm.perm.copy_(torch.arange(dim - 1, -1, -1))
        perm.inv_perm.copy_(torch.arange(dim - 1, -1, -1))
    return perm


def make_spline_step(
    dim: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    bins: int = 8,
    tail_bound: float = 5.0,
    res_blocks: int = 2,
) -> JKOStep:
    """One JKO step of ``layers`` autoregressive rational-quadratic spline layers (normflows' own),
    with coordinate reversals between them.

    The step is the identity at initialisation: each spline starts as the identity and the
    reversals come in pairs. A proximal step must start where it is cheapest (no movement); a
    random permutation such as ``LULinearPermute`` would start it far from ``x``.
    """
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    flows: list[Flow] = []
    for i in range(layers):
        flows.append(
            nf.flows.AutoregressiveRationalQuadraticSpline(
                dim, res_blocks, hidden, num_bins=bins, tail_bound=tail_bound
            )
        )
        if i < layers - 1 or layers % 2 == 0:
            flows.append(_reversal(dim))
    return JKOStep(flows, dim=dim)


def make_flow(
    dim: int,
    num_blocks: int,
    *,
    block: str = "ode",
    hidden: Sequence[int] = (64, 64),
    spline_layers: int = 2,
    spline_hidden: int = 64,
    spline_bins: int = 8,
    **block_kwargs: object,
) -> nf.NormalizingFlow:
    """A ``nf.NormalizingFlow`` of ``num_blocks`` JKO steps on ``N(0, I)``, ready for ``JKOTrainer``.

    Args:
        dim: Data dimension.
        num_blocks: Number of JKO steps.
        block: ``"ode"`` (``JKOBlock``) or ``"spline"`` (``JKOStep`` of spline layers).
        hidden: Hidden widths of each ODE block's velocity MLP.
        spline_layers, spline_hidden, spline_bins: Shape of each spline step.
        **block_kwargs: Further ``JKOBlock`` options (``steps``, ``solver``, ``activation``, ...).
    """
    if block not in BLOCK_KINDS:
        raise ValueError(f"block must be one of {list(BLOCK_KINDS)}, got {block!r}")
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
    if block == "ode":
        flows = [JKOBlock(dim, hidden, **block_kwargs) for _ in range(num_blocks)]
    else:
        if block_kwargs:
            raise ValueError(
                f"options {sorted(block_kwargs)} apply to ODE blocks only, not to block='spline'"
            )
        flows = [
            make_spline_step(dim, layers=spline_layers, hidden=spline_hidden, bins=spline_bins)
            for _ in range(num_blocks)
        ]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def jko_steps(flow: nf.NormalizingFlow) -> list[JKOBlock | JKOStep]:
    """The JKO steps of ``flow`` in training order (data side first, i.e. ``flows[-1]`` first)."""
    return [f for f in reversed(flow.flows) if isinstance(f, (JKOBlock, JKOStep))]


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
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    blocks = [f for f in flow.flows if isinstance(f, JKOBlock)]
    saved = [b.steps for b in blocks]
    for b in blocks:
        b.steps = steps
    try:
        yield flow
    finally:
        for b, n in zip(blocks, saved):
            b.steps = n
