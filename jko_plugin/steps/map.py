r"""Any group of normflows layers as one JKO proximal step: ``JKOStep``."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable

import torch
from normflows.flows import Flow
from torch import Tensor, nn

from .._validate import check_batch
from .base import ProximalStep, Transport, check_interval
from .layers import LAYER_TYPES, build_layer, describe_layer, layer_nfe

__all__ = ["JKOStep"]

#: A sampler evaluates a map step's secant velocity at its latent-side end ``t1``, to this
#: fraction of the step size (``JKOScheduler`` may move a stage by ``BOUNDARY_EPS * h``).
_AT_END_RTOL = 1e-6


class JKOStep(ProximalStep):
    """Groups normflows layers into one invertible step map trained as one JKO step.

    The convergence of proximal gradient descent in W2 holds for any invertible step map, so
    e.g. two rational-quadratic spline layers and an LU permutation can take the place of an
    ODE block: they are fast to invert and give exact log-determinants.

    Layer order follows ``nf.NormalizingFlow``: ``flows[0]`` is nearest the latent, so
    ``forward`` applies the layers in order and ``inverse`` in reverse order.

    A conditional step (``context_dim`` or ``num_classes``) passes its encoded context to every
    layer that takes one (``context=``, as ``nf.ConditionalNormalizingFlow`` does): normflows'
    spline layers see it through their own ``num_context_channels``, which must equal the
    context's features (``context_dim``, or ``embed_dim`` for labels, whose embedding the step
    holds).

    Args:
        flows: The normflows layers of the step (at least one).
        dim: Data dimension, checked on every call.
        kind: Registry name of the step kind (``"map"`` for a hand-made group of layers).
        context_dim, num_classes, embed_dim: The step's context (``ContextEncoder``).

    Example:
        >>> import normflows as nf
        >>> step = JKOStep([nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, 16),
        ...                 nf.flows.LULinearPermute(2)], dim=2)
        >>> step.inverse(torch.randn(4, 2))[0].shape
        torch.Size([4, 2])
    """

    block_type = "map"

    def __init__(
        self,
        flows: Iterable[Flow],
        *,
        dim: int,
        kind: str = "map",
        context_dim: int | None = None,
        num_classes: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__(dim, kind, context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim)
        self.flows = nn.ModuleList(flows)
        if len(self.flows) == 0:
            raise ValueError("JKOStep needs at least one normflows layer, got none")
        features = self.context_encoder.features or None
        for i, layer in enumerate(self.flows):
            channels = _context_channels(layer)
            if channels is not False and channels != features:
                raise ValueError(
                    f"layer {i} ({type(layer).__name__}) has num_context_channels={channels}, the step's "
                    f"context has {features} features: build the layers with num_context_channels={features}"
                )
        self._interval = (0.0, 1.0)

    # -- the contract ----------------------------------------------------------------------
    def config(self) -> dict:
        """``{"dim", "kind", "layers": [describe_layer(f), ...]}``; rebuild with ``JKOStep.from_config``.

        Raises:
            ValueError: A layer that ``describe_layer`` cannot describe.
        """
        layers = [describe_layer(f) for f in self.flows]
        return {"dim": self.dim, "kind": self.kind, "layers": layers, **self.context_encoder.config()}

    @classmethod
    def from_config(cls, config: dict) -> JKOStep:
        """A fresh step (new weights) from ``config()``'s output."""
        layers = config.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"a JKOStep config needs a non-empty 'layers' list, got {config!r}")
        context = {k: config[k] for k in ("context_dim", "num_classes", "embed_dim") if k in config}
        return cls(
            [build_layer(spec) for spec in layers],
            dim=config["dim"],
            kind=config.get("kind", "map"),
            **context,
        )

    def penalty(self) -> Tensor | None:
        """The sum of the layers' ``penalty()`` (layers that define one, e.g. ``GridRQSpline``)."""
        terms = [t for f in self.flows if (t := getattr(f, "penalty", lambda: None)()) is not None]
        return sum(terms) if terms else None

    @property
    def nfe(self) -> int:
        """Network evaluations per sample of ``forward``: the sum over the layers."""
        return sum(layer_nfe(f, self.dim) for f in self.flows)

    @property
    def time_interval(self) -> tuple[float, float]:
        """``(t0, t1)``: where the schedule placed the step (a plain attribute, not saved)."""
        return self._interval

    def set_interval(self, t0: float, t1: float) -> None:
        """Place the step on ``[t0, t1]`` of the flow's time axis (``t1 > t0``)."""
        self._interval = check_interval(t0, t1)

    def velocity_at(self, x: Tensor, t: float, context: Tensor | None = None) -> Tensor:
        """The secant velocity ``(x - F(x)) / h`` of the map ``F`` (= ``forward``), defined at the
        step's latent-side end ``t1`` only: one Euler jump of ``-h`` from there lands on ``F(x)``.

        Raises:
            ValueError: ``t`` away from ``t1``.
        """
        t0, t1 = self._interval
        h = t1 - t0
        if abs(float(t) - t1) > _AT_END_RTOL * h:
            raise ValueError(
                f"this JKOStep is a discrete map: its velocity is defined at t = {t1} only "
                f"(one jump, as JKOScheduler steps it), got t = {float(t)}"
            )
        y, _ = self.forward(x, context=context)
        return (x - y) / h

    # -- the map -----------------------------------------------------------------------------
    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``."""
        check_batch(z, self.dim, "z")
        c = self.context_encoder(context, z)
        log_det = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, ld = _latent_to_data(flow, z, c)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``."""
        check_batch(x, self.dim)
        c = self.context_encoder(context, x)
        log_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flows):
            x, ld = flow.inverse(x, context=c) if c is not None and _takes_context(flow) else flow.inverse(x)
            log_det = log_det + ld
        return x, log_det

    def transport(self, x: Tensor, *, log_det: bool = True, context: Tensor | None = None) -> Transport:
        """Data -> latent pass with the per-sample JKO loss terms (no kinetic energy). The
        log-determinant comes with the pass at no extra cost, so ``log_det`` is accepted and
        ignored."""
        z, ld = self.inverse(x, context=context)
        return Transport(z, ld, (z - x).square().sum(-1), None)


def _takes_context(layer: Flow) -> bool:
    """Whether ``layer.forward`` accepts ``context=`` (normflows' spline and permutation layers do)."""
    return "context" in inspect.signature(layer.forward).parameters


def _context_channels(layer: Flow) -> int | None | bool:
    """The ``num_context_channels`` a describable normflows layer was built with (``None``: none),
    or ``False`` for a layer without such a setting."""
    entry = LAYER_TYPES.get(type(layer).__name__)
    if entry is None or type(layer) is not entry.cls:
        return False
    try:
        kwargs = entry.describe(layer)  # read from the layer itself, not from a recorded spec
    except ValueError:
        return False
    return kwargs["num_context_channels"] if "num_context_channels" in kwargs else False


def _latent_to_data(flow: Flow, z: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
    """``flow(z)`` (with ``c`` when it takes a context). normflows' rational-quadratic spline
    inverse asserts a non-negative discriminant, which float32 rounding can break for a point on a
    bin edge (seen while sampling a trained d = 64 coupling flow): that layer is then evaluated
    once more in float64 and the result cast back. (The layers built on ``rq_spline`` clamp the
    discriminant at 0 instead, so only plain normflows layers take this path.)"""

    def call(layer: Flow, zz: Tensor, cc: Tensor | None) -> tuple[Tensor, Tensor]:
        return layer(zz, context=cc) if cc is not None and _takes_context(layer) else layer(zz)

    try:
        return call(flow, z, c)
    except AssertionError:
        if z.dtype == torch.float64:
            raise
        wide = copy.deepcopy(flow).double()
        cc = c.double() if c is not None and c.is_floating_point() else c
        out, ld = call(wide, z.double(), cc)
        return out.to(z.dtype), ld.to(z.dtype)
