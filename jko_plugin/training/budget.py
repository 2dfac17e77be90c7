r"""How many iterations each block gets: a fixed count, or a wall-clock budget shared among the blocks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .._validate import positive, positive_int
from .history import TrainingHistory

__all__ = ["FixedIterations", "IterationCosts", "IterationPlan", "TimeBudget"]


@dataclass(frozen=True)
class IterationCosts:
    """What training costs, in seconds, as ``JKOTrainer.estimate_costs`` measures it.

    Attributes:
        per_iteration: One training iteration (transport, JKO loss, backward, optimizer step).
        per_block: A block's fixed work: pushing the data through it and its diagnostics.
        per_fit: The fit's one-off work (the data-entropy estimate behind the KL figures).
    """

    per_iteration: float
    per_block: float
    per_fit: float


class IterationPlan(Protocol):
    """Decides, before each block, how many iterations it trains (``JKOTrainer.fit(plan=...)``)."""

    def iterations(self, block: int, history: TrainingHistory) -> int:
        """Iterations for ``block`` (1 = data side), given the records of the blocks trained so far."""
        ...

    # A plan may also define ``revise(done, seconds) -> int``: the block's iterations once ``done``
    # of them took ``seconds`` (training alone); ``JKOTrainer`` asks it once, early in each block.


@dataclass(frozen=True)
class FixedIterations:
    """The same number of iterations for every block (the trainer's default plan)."""

    count: int

    def __post_init__(self) -> None:
        positive_int("count", self.count)

    def iterations(self, block: int, history: TrainingHistory) -> int:
        """``count``."""
        return self.count


class TimeBudget:
    """Shares ``seconds`` of wall clock among ``num_blocks`` blocks.

    Before each block (each call of ``iterations``), the time left is split equally among the
    blocks left, the block's fixed
    cost is taken off and the rest turned into iterations at the measured cost per iteration:
    first ``costs.per_iteration``, then the mean over the blocks trained so far, from their
    records (``seconds`` less ``costs.per_block`` but at least half of ``seconds``, over
    ``iterations``). Early in each block the trainer asks ``revise`` with the rate of the block's
    own first iterations, which corrects an estimate taken in a noisy moment: the 300 s rose
    runs planned 1,000 iterations for block 1 where 4,400 fitted, and lost most of block 1's
    shares to the blocks after it. The clock starts when
    the plan is made (or at ``start``, a ``time.perf_counter()`` value).

    With ``weights`` the time left is shared in proportion to the weights of the blocks left
    instead of equally (e.g. ``(3, 1, 1, 1)`` gives the first block, which moves the data the
    most, three shares).

    Args:
        seconds: The budget for the whole fit.
        costs: ``JKOTrainer.estimate_costs``'s measurement.
        num_blocks: Blocks to share the budget among.
        start: When the budget started (default: now).
        weights: Relative shares per block (``num_blocks`` positive numbers; default equal).

    Example:
        >>> plan = TimeBudget(10.0, IterationCosts(0.01, 0.5, 0.0), 4)
        >>> 190 <= plan.iterations(1, TrainingHistory()) <= 200
        True
    """

    def __init__(
        self,
        seconds: float,
        costs: IterationCosts,
        num_blocks: int,
        *,
        start: float | None = None,
        weights: tuple[float, ...] | None = None,
    ) -> None:
        self.seconds = positive("seconds", seconds)
        self.costs = costs
        self.num_blocks = positive_int("num_blocks", num_blocks)
        self.start = time.perf_counter() if start is None else float(start)
        weights = (1.0,) * self.num_blocks if weights is None else tuple(weights)
        if len(weights) != self.num_blocks:
            raise ValueError(f"weights must hold one number per block ({self.num_blocks}), got {weights}")
        self.weights = tuple(positive(f"weights[{i}]", w) for i, w in enumerate(weights))
        self._planned = 0  # blocks planned so far (a fit with ``adapt`` trains blocks twice)
        self._train_until: float | None = None  # when the current block's iterations should end

    def seconds_per_iteration(self, history: TrainingHistory) -> float:
        """The cost per iteration measured on the blocks trained so far (the estimate before any)."""
        done = [b for b in history.blocks if b.iterations > 0]
        if not done:
            return self.costs.per_iteration
        # At most half of a block's time counts as its fixed cost: a block quicker than the
        # estimated fixed cost (a few iterations in a small budget) must not make iterations look
        # free, or the next block plans millions of them.
        rates = [max(b.seconds - self.costs.per_block, b.seconds / 2) / b.iterations for b in done]
        return sum(rates) / len(rates)

    def iterations(self, block: int, history: TrainingHistory) -> int:
        """Iterations that fit in this block's share of the time left (at least 1)."""
        left = self.seconds - self.costs.per_fit - (time.perf_counter() - self.start)
        done = min(self._planned, self.num_blocks - 1)
        self._planned += 1
        share = left * self.weights[done] / sum(self.weights[done:])
        self._train_until = time.perf_counter() + share - self.costs.per_block
        return max(1, int((share - self.costs.per_block) / self.seconds_per_iteration(history)))

    def revise(self, done: int, seconds: float) -> int:
        """The current block's iterations, now that its first ``done`` took ``seconds``: as many
        as fit before its share of the time ends at that rate (at least ``done``).

        >>> plan = TimeBudget(10.0, IterationCosts(0.04, 0.0, 0.0), 1)  # an estimate 4x too slow
        >>> plan.iterations(1, TrainingHistory()) <= 250
        True
        >>> 990 <= plan.revise(10, 0.1) <= 1010  # 10 iterations took 0.01 s each: 10 s fit 1,000
        True
        """
        if self._train_until is None:
            raise RuntimeError("revise() before iterations(): no block is planned")
        rate = max(positive("seconds", seconds) / positive_int("done", done), 1e-9)
        return max(done, done + int((self._train_until - time.perf_counter()) / rate))
