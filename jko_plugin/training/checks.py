r"""Within-step checks: after which iterations a step is scored on held-out points, and which
of the scored iterates it keeps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["EXPLOIT_TOLERANCE", "check_iterations", "choose_on_scored_density"]

#: Nats by which the ODE's proximal loss of the iterate a step's checks kept may exceed the
#: few-step loss they scored it on before the checks are scored again on the ODE's density. With 3
#: RK4 steps per block the two agree within 1e-3 (gmm16, 120 s); an exploited log-det strayed by
#: 0.92 (gmm16, 300 s) and by 2.5-10 nats (moons, 2 RK4 steps): BENCHMARKS.md s.4.0.
EXPLOIT_TOLERANCE = 0.01

#: An iterate: ``(its score, its weights, the iterations behind it)``.
Scored = tuple[float, dict[str, Tensor], int]


def check_iterations(iterations: int, checks: int) -> list[int]:
    """The iteration counts after which a step with ``checks`` validation checks is measured:
    ``iterations * (i / checks)^2`` for ``i = 1..checks`` (fewer when there are fewer iterations).
    Denser early, because on small data a step's best iterate comes early: the last iterates of
    a cosine-annealed run differ little.

    >>> check_iterations(100, 4), check_iterations(3, 10)
    ([6, 25, 56, 100], [1, 2, 3])
    """
    if checks <= 0:
        return []
    return sorted({max(1, round(iterations * (i / checks) ** 2)) for i in range(1, checks + 1)})


def choose_on_scored_density(
    step: nn.Module,
    best: Scored,
    candidates: list[tuple[dict[str, Tensor], int]],
    score: Callable[[nn.Module], float],
) -> Scored:
    """The iterate to keep when the checks scored a cheaper density than the step is scored with.

    ``best`` won the checks; ``score`` (the ODE's density) rescores it. If that is within
    ``EXPLOIT_TOLERANCE`` of its check score, ``best`` stands (the usual case: one extra score);
    otherwise the optimiser exploited the few-step log-det, and every candidate ``(weights,
    iterations)`` is scored again and the best of them kept. ``step`` ends with its own weights.

    >>> step = nn.Linear(1, 1, bias=False)
    >>> states = [({"weight": torch.tensor([[w]])}, i) for i, w in enumerate([0.5, 2.0])]
    >>> score = lambda s: float(s.weight.detach()) ** 2  # the scored density prefers the smaller weight
    >>> choose_on_scored_density(step, (1.0, *states[1]), states, score)[2]
    0
    """
    held = _copy(step)
    try:
        step.load_state_dict(best[1])
        if score(step) - best[0] <= EXPLOIT_TOLERANCE:
            return best
        rescored = []
        for state, iterations in candidates:
            step.load_state_dict(state)
            rescored.append((score(step), state, iterations))
        return min(rescored, key=lambda c: c[0])
    finally:
        step.load_state_dict(held)


def _ema(step: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``step``'s parameters (its buffers follow the step's);
    its first ``update_parameters`` copies the step, so the average starts at the first iterate."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(step, multi_avg_fn=get_ema_multi_avg_fn(decay))


def _copy(step: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in step.state_dict().items()}
