r"""The contract every JKO step meets: ``ProximalStep``, a normflows ``Flow`` that is one proximal step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from normflows.flows import Flow
from torch import Tensor

from .._validate import positive_int
from .context import ContextEncoder

__all__ = ["BLOCK_TYPES", "ProximalStep", "Transport"]

#: How a step moves points along the time axis: ``"ode"``, the flow of a velocity field over its
#: interval (``JKOBlock``); ``"map"``, one invertible jump across it (``JKOStep``).
BLOCK_TYPES = ("ode", "map")


@dataclass
class Transport:
    """What one data -> noise pass of a JKO step yields per sample, all of shape ``(batch,)``
    except ``z`` ``(batch, d)``.

    Attributes:
        z: The pushed points ``T(x)``.
        log_det: ``log|det dT/dx|`` (``None`` from ``transport(x, log_det=False)`` of an ODE block).
        sq_displacement: ``|T(x) - x|^2``.
        kinetic_energy: ``integral |f(x_t, t)|^2 dt`` along the path, or ``None`` for steps that
            are not ODE flows.
    """

    z: Tensor
    log_det: Tensor | None
    sq_displacement: Tensor
    kinetic_energy: Tensor | None


class ProximalStep(Flow):
    r"""One JKO (Wasserstein proximal) step as a normflows layer: the contract shared by all step kinds.

    The trainer, the diffusers model and the pipeline talk to steps through this contract only:

    - ``inverse(x)`` (data -> latent) and ``forward(z)`` as every normflows ``Flow``;
    - ``transport(x)``: the data -> latent pass with the per-sample terms of the JKO loss;
    - ``inversion_error(x)``: how far ``forward(inverse(x))`` lands from ``x``;
    - ``penalty()``: an optional prior on the step's weights, added to its training loss only;
    - ``set_interval(t0, t1)`` / ``time_interval``: where ``StepSchedule.place`` put the step on
      the flow's time axis, and ``velocity_at(x, t)``: the velocity a sampler integrates there;
    - ``config()``: a JSON description that ``from_config`` rebuilds the step from (fresh weights);
    - ``kind``: the registry name it was built as (``STEP_KINDS``), ``block_type``: ``"ode"`` or
      ``"map"`` (see ``BLOCK_TYPES``), and ``nfe``: network evaluations per sample, latent -> data.

    Context: a conditional step (built with ``context_dim`` or ``num_classes``) is one proximal
    step per value of the context ``c``,
    ``rho_k(. | c) = argmin KL(rho || q) + W2^2(rho, rho_{k-1}(. | c)) / (2 h_k)``. Every method
    above then takes ``context=`` (class labels ``(batch,)`` or a tensor ``(batch, context_dim)``,
    one row per point), as normflows' ``ConditionalNormalizingFlow`` passes it to every layer;
    ``context_encoder`` (a ``ContextEncoder``) checks it and turns it into features, and its
    settings are part of ``config()``. Without context a step is unconditional and refuses one;
    a conditional step called without one raises ``ValueError``.

    Args:
        dim: Data dimension ``d``.
        kind: Registry name of the step kind.
        context_dim, num_classes, embed_dim: The step's context (see ``ContextEncoder``); none
            for an unconditional step.
    """

    block_type: ClassVar[str] = "map"

    def __init__(
        self,
        dim: int,
        kind: str,
        *,
        context_dim: int | None = None,
        num_classes: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        self.kind = kind
        # Unconditional: a module without parameters, so the state_dict is that of before context.
        self.context_encoder = ContextEncoder(
            context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim
        )

    # -- to be provided by each kind ---------------------------------------------------------
    def transport(self, x: Tensor, *, log_det: bool = True, context: Tensor | None = None) -> Transport:
        """Data -> latent pass with the per-sample terms of the JKO loss."""
        raise NotImplementedError

    def velocity_at(self, x: Tensor, t: float, context: Tensor | None = None) -> Tensor:
        """The velocity ``dx/dt`` a sampler integrates at flow time ``t`` inside the step's interval."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description; ``type(self).from_config(config)`` rebuilds the step."""
        raise NotImplementedError

    @property
    def nfe(self) -> int:
        """Network evaluations per sample in the latent -> data direction."""
        raise NotImplementedError

    @property
    def time_interval(self) -> tuple[float, float]:
        """``(t0, t1)``: the step's place on the flow's time axis."""
        raise NotImplementedError

    def set_interval(self, t0: float, t1: float) -> None:
        """Place the step on ``[t0, t1]`` of the flow's time axis (``t1 > t0``)."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """Whether the step takes a context."""
        return self.context_encoder.conditional

    @property
    def num_classes(self) -> int | None:
        """Number of class labels of a label-conditional step, else ``None``."""
        return self.context_encoder.num_classes

    @property
    def context_dim(self) -> int | None:
        """Features of a continuous context, else ``None``."""
        return self.context_encoder.context_dim

    @classmethod
    def from_config(cls, config: dict) -> ProximalStep:
        """A fresh step (new weights) from ``config()``'s output."""
        return cls(**config)

    def penalty(self) -> Tensor | None:
        """A prior on the step's own weights that its training adds to the proximal loss (never
        to its checks or scores), or ``None``: the base step has none."""
        return None

    @property
    def duration(self) -> float:
        """``t1 - t0``: the step size ``h`` of this step."""
        t0, t1 = self.time_interval
        return t1 - t0

    @torch.no_grad()
    def inversion_error(self, x: Tensor, context: Tensor | None = None) -> float:
        """Mean Euclidean distance ``|forward(inverse(x)) - x|`` over the batch."""
        z, _ = self.inverse(x, context=context)
        x_back, _ = self.forward(z, context=context)
        return float((x_back - x).norm(dim=-1).mean())


def check_interval(t0: float, t1: float) -> tuple[float, float]:
    """``(t0, t1)`` as floats with ``t1 > t0``, else ``ValueError``."""
    t0, t1 = float(t0), float(t1)
    if not t1 > t0:
        raise ValueError(f"interval must satisfy t1 > t0, got ({t0}, {t1})")
    return t0, t1
