r"""Sample-quality metrics: W2 from debiased Sinkhorn divergences (GeomLoss), MMD, NLL, inversion error."""

from .scores import MMD_BANDWIDTH_FACTORS, bits_per_dim, inversion_error, mmd, nll
from .wasserstein import (
    BACKENDS,
    RELATIVE_BLUR,
    SinkhornResult,
    sinkhorn,
    sinkhorn_divergence,
    w2_floor,
    wasserstein2,
)

__all__ = [
    "BACKENDS",
    "MMD_BANDWIDTH_FACTORS",
    "RELATIVE_BLUR",
    "SinkhornResult",
    "bits_per_dim",
    "inversion_error",
    "mmd",
    "nll",
    "sinkhorn",
    "sinkhorn_divergence",
    "w2_floor",
    "wasserstein2",
]
