r"""Changing which JKO steps a flow holds: grow, drop, renew for a new schedule, match a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence

import normflows as nf
from normflows.flows import Flow
from torch import nn

from ..steps.base import ProximalStep
from ..steps.kinds import fresh_like, jko_steps

__all__ = ["append_step", "best_prefix", "drop_steps_after", "grow_to", "renew_steps", "warm_start"]


def _data_first(flow: nf.NormalizingFlow) -> list[Flow]:
    return list(reversed(flow.flows))


def _set_data_first(flow: nf.NormalizingFlow, layers: list[Flow]) -> None:
    flow.flows = nn.ModuleList(reversed(layers))


def _fresh(step: ProximalStep, seed: int) -> ProximalStep:
    try:
        return fresh_like(step, seed=seed)
    except ValueError as err:
        raise ValueError(
            f"cannot add or renew JKO steps like this {type(step).__name__}: it cannot be rebuilt from "
            f"its config ({err})"
        ) from err


def append_step(flow: nf.NormalizingFlow, *, seed: int) -> ProximalStep:
    """Add a fresh copy of the last JKO step (the one nearest the latent) on its latent side;
    other layers stay where they are. Returns the new step."""
    layers = _data_first(flow)
    last = max(i for i, f in enumerate(layers) if isinstance(f, ProximalStep))
    new = _fresh(layers[last], seed)
    layers.insert(last + 1, new)
    _set_data_first(flow, layers)
    return new


def grow_to(flow: nf.NormalizingFlow, count: int, *, seed: int) -> None:
    """Append fresh JKO steps (see ``append_step``) until the flow holds ``count``; step ``k``
    draws its weights from ``seed + k``."""
    while len(jko_steps(flow)) < count:
        append_step(flow, seed=seed + len(jko_steps(flow)) + 1)


def drop_steps_after(flow: nf.NormalizingFlow, keep: int) -> None:
    """Remove the JKO steps after the first ``keep`` (data side first); other layers stay."""
    kept, layers = 0, []
    for layer in _data_first(flow):
        if isinstance(layer, ProximalStep):
            kept += 1
            if kept > keep:
                continue
        layers.append(layer)
    _set_data_first(flow, layers)


def best_prefix(nlls: Sequence[float]) -> int:
    """How many steps (data side first) to keep, given the held-out NLL of the flow cut after each
    step: the prefix with the lowest, the shortest on ties.

    >>> best_prefix([3.0, 2.5, 2.7])
    2

    Raises:
        ValueError: No NLL, or a NaN.
    """
    if not nlls or any(math.isnan(v) for v in nlls):
        raise ValueError(f"keeping the best steps needs the trained blocks' held-out NLLs, got {list(nlls)}")
    return 1 + min(range(len(nlls)), key=lambda i: (nlls[i], i))


def renew_steps(flow: nf.NormalizingFlow, count: int, *, seed: int) -> None:
    """Replace every JKO step by a fresh copy of the first one's config and grow to ``count``
    steps (a new schedule's blocks, all untrained); step ``k`` draws from ``seed + k``."""
    layers = _data_first(flow)
    template = next(f for f in layers if isinstance(f, ProximalStep))
    k = 0
    for i, layer in enumerate(layers):
        if isinstance(layer, ProximalStep):
            k += 1
            layers[i] = _fresh(template, seed + k)
    _set_data_first(flow, layers)
    if count < k:
        drop_steps_after(flow, count)
    grow_to(flow, count, seed=seed)


def warm_start(step: nn.Module, previous: nn.Module) -> None:
    """Start ``step`` from ``previous``'s weights (same class; its place on the time axis kept)."""
    if type(step) is not type(previous):
        return
    state = {k: v for k, v in previous.state_dict().items() if k != "interval"}
    step.load_state_dict(state, strict=False)
