r"""Scores of samples and models: MMD between samples, NLL and bits per dimension, inversion error."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validate import as_points, positive, positive_int
from ._solvers import CHUNK, _half_sq_dist
from .wasserstein import ArrayLike, _pair

__all__ = ["MMD_BANDWIDTH_FACTORS", "bits_per_dim", "inversion_error", "mmd", "nll"]

#: Default MMD bandwidths, as multiples of the median pairwise distance.
MMD_BANDWIDTH_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0)


def mmd(x: ArrayLike, y: ArrayLike, *, bandwidths: float | tuple[float, ...] | None = None) -> float:
    r"""Squared maximum mean discrepancy with a Gaussian (mixture) kernel.

    ``MMD^2 = mean k(x_i, x_j) + mean k(y_i, y_j) - 2 mean k(x_i, y_j)`` (the V-statistic: zero
    for identical sets, never negative) with ``k(u, v) = mean_s exp(-|u - v|^2 / (2 s^2))`` over
    the bandwidths ``s``. For one value per bandwidth, call once per bandwidth.

    Args:
        x: Points, shape ``(n, d)``.
        y: Points, shape ``(m, d)``.
        bandwidths: A bandwidth or a tuple of them, in data units. Default: the median pairwise
            distance of the pooled points (of up to 2000 of them) times ``MMD_BANDWIDTH_FACTORS``
            = (1/8, 1/4, 1/2, 1, 2).

    Returns:
        ``MMD^2``, a float.

    Raises:
        ValueError: Bad points (as :func:`sinkhorn`) or a nonpositive bandwidth.

    Example:
        >>> x = torch.randn(500, 2)
        >>> mmd(x, x), mmd(x, x + 1.0) > 0.01
        (0.0, True)
    """
    x, y = _pair(x, y)
    if bandwidths is None:
        z = torch.cat([x, y])
        d = torch.pdist(z[:: max(1, z.shape[0] // 2000)])
        median = float(d.median()) if d.numel() else 0.0
        bandwidths = tuple(f * median for f in MMD_BANDWIDTH_FACTORS) if median > 0 else (1.0,)
    bandwidths = (bandwidths,) if isinstance(bandwidths, (int, float)) else tuple(bandwidths)
    for s in bandwidths:
        positive("bandwidths", s)
    gammas = [0.5 / (s * s) for s in bandwidths]

    def mean_kernel(p: Tensor, q: Tensor) -> float:
        total, rows = 0.0, max(1, CHUNK // q.shape[0])
        for s in range(0, p.shape[0], rows):
            d2 = 2 * _half_sq_dist(p[s : s + rows], q)
            total += sum(float(torch.exp(-g * d2).sum(dtype=torch.float64)) for g in gammas)
        return total / (len(gammas) * p.shape[0] * q.shape[0])

    if x.shape == y.shape and torch.equal(x, y):
        return 0.0
    return max(mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y), 0.0)


def _model_input(model: torch.nn.Module, x: ArrayLike, batch_size: int) -> list[Tensor]:
    x = as_points(x, "x", upcast_half=True)
    batch_size = positive_int("batch_size", batch_size)
    ref = next(iter(model.parameters()), next(iter(model.buffers()), None))
    x = x if ref is None else x.to(device=ref.device, dtype=ref.dtype)
    return list(torch.split(x, batch_size))


@torch.no_grad()
def nll(
    model: torch.nn.Module, x: ArrayLike, *, batch_size: int = 4096, context: Tensor | None = None
) -> float:
    """Mean negative log-likelihood ``-model.log_prob(x)`` in nats, in batches, without gradients.

    Args:
        model: Anything with ``log_prob(x) -> (batch,)``, e.g. a ``normflows.NormalizingFlow``
            (its train/eval mode is left as it is).
        x: Points, shape ``(n, d)``; moved to the model's device and dtype.
        batch_size: Rows per ``log_prob`` call.
        context: For a conditional model (``log_prob(x, context)``, e.g. an
            ``nf.ConditionalNormalizingFlow``): one label or context row per row of ``x``; the
            result is the conditional NLL ``-mean log p(x | c)``.

    Returns:
        The mean over the rows, a float.

    Raises:
        ValueError: Bad points or batch size, or a log-likelihood that is not finite.
    """
    batches = _model_input(model, x, batch_size)
    if context is None:
        total = sum(float(-model.log_prob(xb).sum(dtype=torch.float64)) for xb in batches)
    else:
        if len(context) != sum(len(xb) for xb in batches):
            raise ValueError(f"context has {len(context)} rows, x has {sum(len(xb) for xb in batches)}")
        ref = batches[0]
        context = context.to(ref.device, ref.dtype) if context.is_floating_point() else context.to(ref.device)
        parts = zip(batches, context.split(batch_size))
        total = sum(float(-model.log_prob(xb, cb).sum(dtype=torch.float64)) for xb, cb in parts)
    value = total / sum(len(xb) for xb in batches)
    if not math.isfinite(value):
        raise ValueError(f"the model's log_prob is not finite on x (mean NLL {value})")
    return value


def bits_per_dim(model: torch.nn.Module, x: ArrayLike, *, batch_size: int = 4096) -> float:
    """:func:`nll` in bits per dimension, ``nll / (d ln 2)`` (continuous data: no dequantisation).

    Raises:
        ValueError: As :func:`nll`.
    """
    value = nll(model, x, batch_size=batch_size)
    return value / (as_points(x, "x", upcast_half=True).shape[1] * math.log(2.0))


@torch.no_grad()
def inversion_error(model: torch.nn.Module, x: ArrayLike, *, batch_size: int = 4096) -> float:
    """Mean Euclidean distance ``|forward(inverse(x)) - x|`` over the rows of ``x``.

    Args:
        model: A ``normflows.NormalizingFlow`` (``inverse``/``forward`` return points) or one
            normflows ``Flow`` (they return ``(points, log_det)``). normflows directions:
            ``inverse`` goes data -> latent.
        x: Data points, shape ``(n, d)``.
        batch_size: Rows per pass.

    Returns:
        The mean distance, a float.

    Raises:
        ValueError: Bad points or batch size.
    """

    def points(out: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        return out[0] if isinstance(out, tuple) else out

    batches, total = _model_input(model, x, batch_size), 0.0
    for xb in batches:
        back = points(model.forward(points(model.inverse(xb))))
        total += float((back - xb).norm(dim=-1).sum(dtype=torch.float64))
    return total / sum(len(xb) for xb in batches)
