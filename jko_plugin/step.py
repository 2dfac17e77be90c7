r"""Any group of normflows layers as one JKO proximal step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from normflows.flows import Flow
from torch import Tensor, nn

from .block import Transport, check_batch

__all__ = ["JKOStep"]


class JKOStep(Flow):
    """Groups normflows layers into one invertible step map trained as one JKO step.

    The convergence of proximal gradient descent in W2 holds for any invertible step map, so
    e.g. two rational-quadratic spline layers and an LU permutation can take the place of an
    ODE block: they are fast to invert and give exact log-determinants.

    Layer order follows ``nf.NormalizingFlow``: ``flows[0]`` is nearest the latent, so
    ``forward`` applies the layers in order and ``inverse`` in reverse order.

    Args:
        flows: The normflows layers of the step (at least one).
        dim: Data dimension, checked on every call.

    Example:
        >>> import normflows as nf
        >>> step = JKOStep([nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, 16),
        ...                 nf.flows.LULinearPermute(2)], dim=2)
        >>> step.inverse(torch.randn(4, 2))[0].shape
        torch.Size([4, 2])
    """

    def __init__(self, flows: Iterable[Flow], *, dim: int) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)
        if len(self.flows) == 0:
            raise ValueError("JKOStep needs at least one normflows layer, got none")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim

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
        ignored (``JKOBlock.transport``'s signature)."""
        z, log_det = self.inverse(x)
        return Transport(z, log_det, (z - x).square().sum(-1), None)

    def inversion_error(self, x: Tensor) -> float:
        """Mean Euclidean distance ``|forward(inverse(x)) - x|`` over the batch."""
        with torch.no_grad():
            z, _ = self.inverse(x)
            return float((self.forward(z)[0] - x).norm(dim=-1).mean())
