r"""Standardisation as a layer of the flow: ``Standardize``, fitted on the training split, then fixed."""

from __future__ import annotations

import math
import warnings

import torch
from normflows.flows import Flow
from torch import Tensor

from .._validate import as_points, check_batch, positive_int
from ..datasets.files import check_columns

__all__ = ["Standardize"]


class Standardize(Flow):
    r"""The fixed affine map ``x = loc + scale * z`` between data units and the flow's units.

    Fitted once on the training split (``fit``), it sits on the data side of a flow
    (``flows[-1]`` of a ``nf.NormalizingFlow``), so that ``log_prob``, ``sample``, the pipeline
    and ``jko-flow sample`` all work in the data's own units: its log-determinant
    ``sum(log scale)`` is part of every log-likelihood. It holds no trainable parameter.

    Args:
        dim: Data dimension.
        loc, scale: Per-column shift and (positive) scale; default 0 and 1 (then ``fit`` or
            ``load_state_dict`` sets them).

    Example:
        >>> x = torch.tensor([[58.0, 1.0], [60.0, 2.0], [62.0, 3.0]])
        >>> norm = Standardize.fit(x)
        >>> norm.loc.tolist(), norm.scale.tolist()
        ([60.0, 2.0], [2.0, 1.0])
        >>> z, log_det = norm.inverse(x)
        >>> z[:, 0].tolist(), round(float(log_det[0]), 4)  # log|det dz/dx| = -log 2
        ([-1.0, 0.0, 1.0], -0.6931)
    """

    def __init__(self, dim: int, loc: Tensor | None = None, scale: Tensor | None = None) -> None:
        super().__init__()
        self.dim = positive_int("dim", dim)
        loc = torch.zeros(dim) if loc is None else torch.as_tensor(loc)
        scale = torch.ones(dim) if scale is None else torch.as_tensor(scale)
        if loc.shape != (dim,) or scale.shape != (dim,):
            raise ValueError(
                f"loc and scale must have shape ({dim},), got {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        if not bool(torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("loc must be finite and scale finite and > 0")
        dtype = loc.dtype if loc.is_floating_point() else torch.get_default_dtype()
        self.register_buffer("loc", loc.to(dtype).clone())
        self.register_buffer("scale", scale.to(dtype).clone())

    @classmethod
    def fit(cls, x: Tensor, *, robust: bool = False, warn: bool = True) -> Standardize:
        """Fit on the training split: mean and standard deviation per column, or with ``robust``
        the median and the interquartile range / 1.349 (the standard deviation of a Gaussian).

        Raises:
            ValueError: A constant column (see ``datasets.files.check_columns``), or bad data.
        """
        x = as_points(x, "x")
        notes = check_columns(x)
        if warn:
            for note in notes:
                warnings.warn(note, UserWarning, stacklevel=2)
        data = x.double()
        if robust:
            loc = data.median(dim=0).values
            q = torch.quantile(data, torch.tensor([0.25, 0.75], dtype=torch.float64), dim=0)
            scale = (q[1] - q[0]) / 1.349
            scale = torch.where(scale > 0, scale, data.std(dim=0))  # a column with a zero IQR
        else:
            loc, scale = data.mean(dim=0), data.std(dim=0)
        return cls(x.shape[1], loc.to(x.dtype), scale.to(x.dtype))

    @property
    def log_scale_sum(self) -> float:
        """``sum(log scale)``: ``log|det dx/dz|`` of the map, the same for every point."""
        return float(torch.log(self.scale.double()).sum())

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Flow units -> data units: ``(loc + scale * z, sum(log scale))``; ``context`` (passed by
        ``nf.ConditionalNormalizingFlow`` to every layer) is ignored: the map is the same for all."""
        check_batch(z, self.dim, "z")
        log_det = z.new_full((z.shape[0],), math.fsum(torch.log(self.scale.double()).tolist()))
        return self.loc + self.scale * z, log_det

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data units -> flow units: ``((x - loc) / scale, -sum(log scale))`` (``context`` ignored)."""
        check_batch(x, self.dim)
        log_det = x.new_full((x.shape[0],), -math.fsum(torch.log(self.scale.double()).tolist()))
        return (x - self.loc) / self.scale, log_det

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
