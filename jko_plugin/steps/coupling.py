r"""A coupling rational-quadratic spline layer that starts at the identity: one network pass either way."""

from __future__ import annotations

import math

import normflows as nf
import torch

from .rq_spline import use_fast_spline

__all__ = ["IdentityInitCoupledRQSpline", "IdentityInitLULinear"]


class IdentityInitCoupledRQSpline(nf.flows.CoupledRationalQuadraticSpline):
    """normflows' ``CoupledRationalQuadraticSpline`` whose conditioner starts at the identity spline.

    normflows initialises the conditioner's last layer at random, so a fresh layer moves its
    input; a proximal step must start where moving costs nothing. Here the last layer's weights
    are zero and its bias gives equal bin widths and heights and unit derivatives at the knots:
    the identity inside ``[-tail_bound, tail_bound]``, and the linear tails are the identity too.
    Inverting is as cheap as the forward pass (one conditioner pass), unlike an autoregressive
    spline, which needs ``d`` passes to sample. The spline is evaluated by
    ``rational_quadratic_spline`` (normflows' map, without masked indexing).

    Takes ``CoupledRationalQuadraticSpline``'s arguments.

    Example:
        >>> layer = IdentityInitCoupledRQSpline(3, 1, 8)
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(layer(x)[0], x, atol=1e-6))
        True
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        coupling = self.prqct
        use_fast_spline(coupling)
        last = coupling.transform_net.final_layer
        bins = coupling.num_bins
        per_feature = coupling._transform_dim_multiplier()
        if coupling.tails != "linear" or per_feature != 3 * bins - 1:
            raise ValueError("IdentityInitCoupledRQSpline needs linear tails")
        # softplus(u) + min_derivative = 1 at every inner knot; zero logits give equal bins.
        derivative = math.log(math.expm1(1.0 - coupling.min_derivative))
        bias = torch.zeros(per_feature)
        bias[2 * bins :] = derivative
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(bias.repeat(last.out_features // per_feature))


class IdentityInitLULinear(nf.flows.Flow):
    """A learned invertible linear map ``x -> W x + b`` with ``W = L U`` (normflows' LU
    parametrisation, unit-diagonal ``L``), starting at the identity.

    normflows' ``LULinearPermute`` adds a random permutation, so it never starts at the identity;
    a proximal step needs to. Between coupling layers it mixes the coordinates that the fixed
    masks keep apart; both directions cost one triangular solve or product (``O(d^2)`` a sample).

    Example:
        >>> layer = IdentityInitLULinear(3)
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(layer(x)[0], x, atol=1e-6))
        True
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        # identity_init: zero off-diagonal entries and a unit diagonal (up to normflows' eps).
        self.linear = nf.flows.mixing._LULinear(self.num_channels, identity_init=True)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # normflows order: forward is latent -> data, the inverse of the data -> latent map W x + b.
        return self.linear.inverse(z)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(z)
