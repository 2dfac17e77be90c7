r"""Sample-quality metrics: W2 (GeomLoss Sinkhorn), MMD, NLL, inversion error, a flow's regularity."""

from .checked import W2_CHECK_RTOL, checked_wasserstein2
from .regularity import LipschitzProfile, Stability, block_stability, latent_stability, lipschitz_profile
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
    "LipschitzProfile",
    "MMD_BANDWIDTH_FACTORS",
    "RELATIVE_BLUR",
    "SinkhornResult",
    "Stability",
    "W2_CHECK_RTOL",
    "bits_per_dim",
    "checked_wasserstein2",
    "block_stability",
    "inversion_error",
    "latent_stability",
    "lipschitz_profile",
    "mmd",
    "nll",
    "sinkhorn",
    "sinkhorn_divergence",
    "w2_floor",
    "wasserstein2",
]
