r"""What every comparison method is: its budget, its trained model, its contract (``Method``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .._validate import positive, positive_int
from .selection import selection_rows

__all__ = [
    "BATCH_SIZE",
    "FM_NLL_STEPS",
    "FM_SAMPLE_SOLVER",
    "FM_SAMPLE_STEPS",
    "PEER_LR",
    "Budget",
    "Method",
    "TrainedModel",
    "peer_training",
    "seeded",
]

#: Solver of flow-matching sampling: 12 RK4 steps, 48 evaluations.
FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER = 12, "rk4"
#: Solver of flow-matching likelihoods (exact divergence).
FM_NLL_STEPS = 64
#: Learning rate of the peers (Adam, cosine decay over the budget).
PEER_LR = 1e-3
BATCH_SIZE = 512


@dataclass(frozen=True)
class Budget:
    """What every method gets: ``seconds`` of wall clock or ``steps`` gradient steps (exactly one).
    ``compile``: the JKO rows train through ``torch.compile`` (its compilation inside their
    budget); the peers' loops are left as their libraries run them."""

    seconds: float | None = None
    steps: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.steps is None):
            raise ValueError(
                f"give exactly one of budget_seconds and steps, got budget_seconds={self.seconds!r}, "
                f"steps={self.steps!r}"
            )
        if self.seconds is not None:
            positive("budget_seconds", self.seconds)
        else:
            positive_int("steps", self.steps)


@dataclass
class TrainedModel:
    """A trained method, ready to be scored.

    Attributes:
        module: The model (its trainable parameters are counted).
        sample: ``(n, generator) -> (n, d)`` samples.
        log_prob: ``(n, d) -> (n,)`` log-densities (the density that is scored).
        nfe: Network evaluations per sample when sampling.
        train_seconds: Wall clock of training, everything included.
        train_steps: Gradient steps taken.
        details: Method-specific figures for ``results.json``.
        fast_sample, fast_nfe: A cheaper sampler of an approximation of the same model (reported
            beside the scored one, never scored for NLL), and its NFE.
        velocity: For an ODE model, what ``VelocityField.from_model`` takes (its velocity field on
            its own time axis): a teacher for flow-map distillation and the Lipschitz diagnostic.
        generate: Latents ``(n, d)`` to samples with the method's own sampler (for the W2
            stability diagnostic), if the method has latents.
    """

    module: nn.Module
    sample: Callable[[int, torch.Generator], Tensor]
    log_prob: Callable[[Tensor], Tensor] | None
    nfe: int
    train_seconds: float
    train_steps: int
    details: dict = field(default_factory=dict)
    fast_sample: Callable[[int, torch.Generator], Tensor] | None = None
    fast_nfe: int | None = None
    velocity: object | None = None
    generate: Callable[[Tensor], Tensor] | None = None


def _latents_to_samples(flow: nn.Module) -> Callable[[Tensor], Tensor]:
    """A normflows flow's sampler from standard-normal latents (through its ``DiagGaussian`` base)."""
    q0 = flow.q0
    return lambda z: flow.forward(q0.loc + torch.exp(q0.log_scale) * z)


class Method:
    """A comparison method: ``train(x, x_val, budget, seed) -> TrainedModel``, on ``x``'s device."""

    name: str = ""
    summary: str = ""
    #: Import names of the optional packages the method needs (see ``adapters.peers.INSTALL_HINTS``).
    requires: tuple[str, ...] = ()
    #: The data dimensions the method models (``None``: any).
    dims: tuple[int, ...] | None = None

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` if the method does not model data of dimension ``dim``."""
        if self.dims is not None and dim not in self.dims:
            raise ValueError(
                f"compare method {self.name!r} models data of dimension {self.dims}, got d = {dim}"
            )

    def check_available(self) -> None:
        """Raise ``ImportError`` naming the install command if a package in ``requires`` is missing."""
        from ..adapters.peers import require

        for package in self.requires:
            try:
                require(package)
            except ImportError as err:
                raise ImportError(f"compare method {self.name!r}: {err}") from err

    def train(self, x: Tensor, x_val: Tensor, budget: Budget, seed: int) -> TrainedModel:
        """Train on ``x`` within ``budget`` (``x_val``: held-out points for diagnostics only)."""
        raise NotImplementedError

    @staticmethod
    def selection_split(x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """``(rows to train on, rows to choose on)``: every method of a run holds out the same
        validation split of its training points (``selection_rows``) and makes its choices on it
        (a JKO row its number of steps, a peer its checkpoint), never on ``x_val``, the points the
        row is scored on."""
        x_fit, x_sel, _, _ = selection_rows(x, seed)
        return x_fit, x_sel


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` with its weights drawn from ``seed``, the global generator left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def peer_training(budget: Budget, x: Tensor, x_sel: Tensor, seed: int) -> dict:
    """What every peer's fit is given: the budget, batches of ``BATCH_SIZE`` (at most the rows),
    ``PEER_LR``, the seed and the selection rows it keeps its best checkpoint on."""
    return dict(
        steps=budget.steps,
        budget_seconds=budget.seconds,
        batch_size=min(BATCH_SIZE, x.shape[0]),
        lr=PEER_LR,
        seed=seed,
        x_val=x_sel,
    )
