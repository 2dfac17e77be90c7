r"""normflows' rational-quadratic spline with linear tails, evaluated without masked indexing.

normflows (after nflows) selects the points inside ``[-B, B]`` with a boolean mask, evaluates the
spline on that subset and scatters the results back: per call a ``nonzero``, an index of every
parameter tensor and two ``index_put``\ s, each again in backward. Here every point is evaluated
at its input clamped to the interval and the tails are chosen with ``torch.where``; the bin's
values come from six gathers, the two ends of the bin in each knot table (normflows: seven). Same
formulas, same parameters, the same numbers (equal in float64; BENCHMARKS.md s.2 gives the speed).
"""

from __future__ import annotations

import math

import normflows as nf
import torch
import torch.nn.functional as F
from normflows.flows.neural_spline.autoregressive import MaskedPiecewiseRationalQuadraticAutoregressive
from normflows.flows.neural_spline.coupling import PiecewiseRationalQuadraticCoupling
from normflows.utils import splines
from torch import Tensor

from .._validate import positive_int

__all__ = ["AutoregressiveRQSpline", "check_bins", "rational_quadratic_spline", "use_fast_spline"]


def check_bins(name: str, bins: object, min_bin_width: float = splines.DEFAULT_MIN_BIN_WIDTH) -> int:
    """``bins`` if it is a positive integer below ``1 / min_bin_width`` (999 at normflows' 1e-3),
    else ``ValueError``: at ``1 / min_bin_width`` every bin is pinned at the minimum width and the
    widths cannot be learnt (``rational_quadratic_spline`` itself refuses only more).

    >>> check_bins("num_bins", 999)
    999
    """
    most = round(1 / min_bin_width) - 1
    bins = positive_int(name, bins)
    if bins > most:
        raise ValueError(f"{name} must be at most {most} (a minimum bin width), got {bins}")
    return bins


def _knots(unnormalized: Tensor, minimum: float, bound: float) -> Tensor:
    bins = unnormalized.shape[-1]
    share = minimum + (1 - minimum * bins) * torch.softmax(unnormalized, dim=-1)
    inner = torch.cumsum(share, dim=-1)[..., :-1] * (2 * bound) - bound
    return F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound)


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    *,
    inverse: bool = False,
    tail_bound: float = 1.0,
    min_bin_width: float = splines.DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = splines.DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = splines.DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """``normflows.utils.splines.unconstrained_rational_quadratic_spline`` with ``tails="linear"``
    and a scalar ``tail_bound``: elementwise outputs and log-derivatives, the identity (and 0)
    outside ``[-tail_bound, tail_bound]``. Shapes as there: ``inputs (..., )``, widths and heights
    ``(..., K)``, derivatives ``(..., K - 1)``; or, one spline for all inputs, ``(K,)`` and
    ``(K - 1,)``.

    >>> x, w, h = torch.randn(6, 2).double(), torch.randn(6, 2, 8).double(), torch.randn(6, 2, 8).double()
    >>> d = torch.randn(6, 2, 7).double()
    >>> ours = rational_quadratic_spline(x, w, h, d, tail_bound=1.0)
    >>> theirs = splines.unconstrained_rational_quadratic_spline(x, w, h, d, tail_bound=1.0)
    >>> all(torch.allclose(a, b) for a, b in zip(ours, theirs))
    True
    """
    bins = unnormalized_widths.shape[-1]
    shared = unnormalized_widths.dim() == 1  # one spline for every input: its knots computed once
    if min_bin_width * bins > 1.0 or min_bin_height * bins > 1.0:
        raise ValueError("Minimal bin width or height too large for the number of bins")
    bound = float(tail_bound)
    inside = (inputs >= -bound) & (inputs <= bound)
    x = inputs.clamp(-bound, bound)  # the tails' points are evaluated at the edge, then discarded
    cum_w = _knots(unnormalized_widths, min_bin_width, bound)
    cum_h = _knots(unnormalized_heights, min_bin_height, bound)
    # the edge derivatives are 1, so that the spline joins its linear tails smoothly
    deriv = F.pad(min_derivative + F.softplus(unnormalized_derivatives), (1, 1), value=1.0)
    located = (cum_h if inverse else cum_w).detach()
    query = x.detach() if shared else x.detach()[..., None]
    left = torch.searchsorted(located, query, right=True).sub_(1).clamp_(0, bins - 1)
    right = left + 1

    def pick(knots: Tensor, at: Tensor) -> Tensor:
        return knots[at] if shared else knots.gather(-1, at)[..., 0]

    x0, x1, y0, y1 = pick(cum_w, left), pick(cum_w, right), pick(cum_h, left), pick(cum_h, right)
    d0, d1 = pick(deriv, left), pick(deriv, right)
    width, height = x1 - x0, y1 - y0
    slope = height / width
    curve = d0 + d1 - 2 * slope
    if inverse:
        rise = x - y0
        a = rise * curve + height * (slope - d0)
        b = height * d0 - rise * curve
        c = -slope * rise
        theta = (2 * c) / (-b - (b.square() - 4 * a * c).clamp_min(0).sqrt())
        out = theta * width + x0
    else:
        theta = (x - x0) / width
    mixed = theta * (1 - theta)
    denominator = slope + curve * mixed
    if not inverse:
        out = y0 + height * (slope * theta.square() + d0 * mixed) / denominator
    numerator = slope.square() * (d1 * theta.square() + 2 * slope * mixed + d0 * (1 - theta).square())
    log_deriv = torch.log(numerator) - 2 * torch.log(denominator)
    if inverse:
        log_deriv = -log_deriv
    return torch.where(inside, out, inputs), torch.where(inside, log_deriv, torch.zeros_like(log_deriv))


def _supported(transform: torch.nn.Module) -> bool:
    return transform.tails == "linear" and not torch.is_tensor(transform.tail_bound)


def _split(params: Tensor, bins: int, hidden: int | None) -> tuple[Tensor, Tensor, Tensor]:
    widths, heights = params[..., :bins], params[..., bins : 2 * bins]
    if hidden is not None:  # normflows scales the bin logits by 1/sqrt(hidden units) where it knows them
        widths, heights = widths / math.sqrt(hidden), heights / math.sqrt(hidden)
    return widths, heights, params[..., 2 * bins :]


def _spline(
    transform: torch.nn.Module, inputs: Tensor, params: Tensor, hidden: int | None, inverse: bool
) -> tuple[Tensor, Tensor]:
    widths, heights, derivatives = _split(params, transform.num_bins, hidden)
    return rational_quadratic_spline(
        inputs,
        widths,
        heights,
        derivatives,
        inverse=inverse,
        tail_bound=transform.tail_bound,
        min_bin_width=transform.min_bin_width,
        min_bin_height=transform.min_bin_height,
        min_derivative=transform.min_derivative,
    )


class _FastAutoregressive(MaskedPiecewiseRationalQuadraticAutoregressive):
    def _elementwise(
        self, inputs: Tensor, autoregressive_params: Tensor, inverse: bool = False
    ) -> tuple[Tensor, Tensor]:
        if not _supported(self):
            return super()._elementwise(inputs, autoregressive_params, inverse)
        hidden = getattr(self.autoregressive_net, "hidden_features", None)  # MADE has none
        params = autoregressive_params.view(inputs.shape[0], inputs.shape[1], -1)
        out, log_deriv = _spline(self, inputs, params, hidden, inverse)
        return out, log_deriv.sum(-1)


class _FastCoupling(PiecewiseRationalQuadraticCoupling):
    def _piecewise_cdf(
        self, inputs: Tensor, transform_params: Tensor, inverse: bool = False
    ) -> tuple[Tensor, Tensor]:
        net = self.transform_net
        hidden = getattr(net, "hidden_features", getattr(net, "hidden_channels", None))
        if not _supported(self) or hidden is None:  # normflows warns about the latter
            return super()._piecewise_cdf(inputs, transform_params, inverse)
        return _spline(self, inputs, transform_params, hidden, inverse)


_FAST = {
    MaskedPiecewiseRationalQuadraticAutoregressive: _FastAutoregressive,
    PiecewiseRationalQuadraticCoupling: _FastCoupling,
}


def use_fast_spline(transform: torch.nn.Module) -> None:
    """Make a normflows spline transform (of exactly ``MaskedPiecewiseRationalQuadraticAutoregressive``
    or ``PiecewiseRationalQuadraticCoupling``) evaluate its spline with ``rational_quadratic_spline``.

    normflows builds the transform inside its layer's constructor, so a layer cannot pass another
    class in; the subclass overrides one method and holds no state of its own, so weights, buffers
    and ``state_dict`` keys stay normflows'.
    """
    fast = _FAST.get(type(transform))
    if fast is None:
        raise TypeError(f"no fast spline for a {type(transform).__qualname__}")
    transform.__class__ = fast


class AutoregressiveRQSpline(nf.flows.AutoregressiveRationalQuadraticSpline):
    """normflows' ``AutoregressiveRationalQuadraticSpline`` (same arguments, weights and map) with
    its spline evaluated by ``rational_quadratic_spline``: the spline steps' layer.

    >>> layer = AutoregressiveRQSpline(2, 1, 8, init_identity=False)
    >>> reference = nf.flows.AutoregressiveRationalQuadraticSpline(2, 1, 8, init_identity=False)
    >>> _ = reference.load_state_dict(layer.state_dict())
    >>> x = torch.randn(5, 2)
    >>> bool(torch.allclose(layer.inverse(x)[0], reference.inverse(x)[0]))
    True
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        use_fast_spline(self.mprqat)
