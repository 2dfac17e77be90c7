r"""Any group of normflows layers as one JKO proximal step: ``JKOStep``."""

from __future__ import annotations

from collections.abc import Iterable

from normflows.flows import Flow
from torch import Tensor, nn

from .._validate import check_batch
from .base import ProximalStep, Transport, check_interval
from .layers import build_layer, describe_layer, layer_nfe

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

    Args:
        flows: The normflows layers of the step (at least one).
        dim: Data dimension, checked on every call.
        kind: Registry name of the step kind (``"map"`` for a hand-made group of layers).

    Example:
        >>> import normflows as nf
        >>> step = JKOStep([nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, 16),
        ...                 nf.flows.LULinearPermute(2)], dim=2)
        >>> step.inverse(torch.randn(4, 2))[0].shape
        torch.Size([4, 2])
    """

    block_type = "map"

    def __init__(self, flows: Iterable[Flow], *, dim: int, kind: str = "map") -> None:
        super().__init__(dim, kind)
        self.flows = nn.ModuleList(flows)
        if len(self.flows) == 0:
            raise ValueError("JKOStep needs at least one normflows layer, got none")
        self._interval = (0.0, 1.0)

    # -- the contract ----------------------------------------------------------------------
    def config(self) -> dict:
        """``{"dim", "kind", "layers": [describe_layer(f), ...]}``; rebuild with ``JKOStep.from_config``.

        Raises:
            ValueError: A layer that ``describe_layer`` cannot describe.
        """
        return {"dim": self.dim, "kind": self.kind, "layers": [describe_layer(f) for f in self.flows]}

    @classmethod
    def from_config(cls, config: dict) -> JKOStep:
        """A fresh step (new weights) from ``config()``'s output."""
        layers = config.get("layers")
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"a JKOStep config needs a non-empty 'layers' list, got {config!r}")
        return cls([build_layer(spec) for spec in layers], dim=config["dim"], kind=config.get("kind", "map"))

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

    def velocity_at(self, x: Tensor, t: float) -> Tensor:
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
        y, _ = self.forward(x)
        return (x - y) / h

    # -- the map -----------------------------------------------------------------------------
    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``."""
        check_batch(z, self.dim, "z")
        log_det = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, ld = flow(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``."""
        check_batch(x, self.dim)
        log_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flows):
            x, ld = flow.inverse(x)
            log_det = log_det + ld
        return x, log_det

    def transport(self, x: Tensor, *, log_det: bool = True) -> Transport:
        """Data -> latent pass with the per-sample JKO loss terms (no kinetic energy). The
        log-determinant comes with the pass at no extra cost, so ``log_det`` is accepted and
        ignored."""
        z, ld = self.inverse(x)
        return Transport(z, ld, (z - x).square().sum(-1), None)
