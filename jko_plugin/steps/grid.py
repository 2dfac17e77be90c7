r"""Spline steps for 2-D data whose conditioner is a table: ``GridRQSpline``, ``make_grid_step``.

In 2-D an autoregressive spline conditions one coordinate on the other, a function of one
variable. A table of spline parameters over that variable, linearly interpolated, learns sharp
detail (a picture's edges) far faster than an MLP conditioner and costs two gathers instead of a
network pass (BENCHMARKS.md s.4.0 measures it on JKO-iFlow's pictures).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from normflows.flows import Flow
from normflows.utils import splines
from torch import Tensor, nn

from .._validate import choice, positive, positive_int
from .rq_spline import check_bins, rational_quadratic_spline

if TYPE_CHECKING:
    from .map import JKOStep

__all__ = ["GridRQSpline", "make_grid_step"]


def _identity_derivative_logit() -> float:
    # softplus(logit) + min_derivative = 1: the knots' slopes of the identity spline
    return math.log(math.expm1(1.0 - splines.DEFAULT_MIN_DERIVATIVE))


class GridRQSpline(Flow):
    """A 2-D autoregressive rational-quadratic spline layer (linear tails outside
    ``[-tail_bound, tail_bound]``): coordinate ``given`` goes through a spline of its own, the
    other through a spline whose parameters are read from a table of ``knots`` rows over
    ``[-tail_bound, tail_bound]`` of coordinate ``given`` (linear interpolation between rows; the
    edge rows beyond). One pass in both directions; the identity at initialisation.

    Direction as normflows' spline layers: ``inverse`` is data -> latent.

    Args:
        given: The coordinate (0 or 1) that the other is conditioned on.
        num_bins: Bins per spline of the table.
        knots: Rows of the table (at least 2).
        tail_bound: The splines' interval ``[-B, B]``, also the table's.
        read_at: Where the table is read: ``"data"``, at the given coordinate's input value, or
            ``"latent"``, at its value after its own spline (rows spread by probability mass).
        smoothness: Weight ``s`` of the prior ``penalty() = s * sum_r |row_{r+1} - row_r|^2``
            that training adds to the step's loss (0: none), so that neighbouring rows share
            their points. Off here; ``make_grid_step`` uses 512 rows with ``s = 5e-6`` and the
            ``"l1"`` norm, which beat the squared one on validation on 5 of 6 seed-picture
            pairs (BENCHMARKS.md s.4.0).
        marginal_bins: Bins of the given coordinate's own spline (``num_bins`` when ``None``):
            one spline shared by every point, so more bins there cost little.
        smoothness_norm: ``"l2"`` (squared row differences) or ``"l1"`` (their absolute values:
            the table's total variation, which lets a row jump at a picture's edge and pulls
            small differences, noise, to zero).

    Example:
        >>> layer = GridRQSpline(given=0, num_bins=8, knots=16)
        >>> x = torch.randn(5, 2)
        >>> bool(torch.allclose(layer.inverse(x)[0], x, atol=1e-6))
        True
        >>> float(GridRQSpline(num_bins=8, knots=16, smoothness=0.1).penalty())  # equal rows at init
        0.0
    """

    def __init__(
        self,
        given: int = 0,
        num_bins: int = 64,
        knots: int = 256,
        tail_bound: float = 5.0,
        read_at: str = "data",
        smoothness: float = 0.0,
        marginal_bins: int | None = None,
        smoothness_norm: str = "l2",
    ) -> None:
        super().__init__()
        self.read_at = choice("read_at", read_at, ("data", "latent"))
        self.given = int(choice("given", given, (0, 1)))
        self.num_bins = check_bins("num_bins", num_bins)
        self.knots = positive_int("knots", knots, minimum=2)
        self.tail_bound = float(positive("tail_bound", tail_bound))
        self.marginal_bins = (
            self.num_bins if marginal_bins is None else check_bins("marginal_bins", marginal_bins)
        )
        marginal = torch.zeros(3 * self.marginal_bins - 1)
        table = torch.zeros(self.knots, 3 * self.num_bins - 1)
        marginal[2 * self.marginal_bins :] = _identity_derivative_logit()
        table[:, 2 * self.num_bins :] = _identity_derivative_logit()
        self.marginal = nn.Parameter(marginal)
        self.table = nn.Parameter(table)
        self.smoothness = float(smoothness)
        if not self.smoothness >= 0:
            raise ValueError(f"smoothness must be >= 0, got {smoothness!r}")
        self.smoothness_norm = choice("smoothness_norm", smoothness_norm, ("l2", "l1"))

    def _conditioner(self, x_given: Tensor) -> Tensor:
        bound = self.tail_bound
        position = (x_given.clamp(-bound, bound) + bound) * ((self.knots - 1) / (2 * bound))
        low = position.detach().floor().clamp_(0, self.knots - 2).long()
        t = position - low
        # A bag of the two rows around each point, weighted (1 - t, t): one gather, and a backward
        # that adds into the rows (indexing's backward, index_put, took 2.5x as long on 2 cores).
        rows, weights = torch.stack((low, low + 1), dim=1), torch.stack((1 - t, t), dim=1)
        return F.embedding_bag(rows, self.table, per_sample_weights=weights, mode="sum")

    def penalty(self) -> Tensor | None:
        """``smoothness * sum_r |row_{r+1} - row_r|^2`` over the table (``sum_r |row_{r+1} - row_r|_1``
        with ``smoothness_norm="l1"``), or ``None`` without a prior."""
        if not self.smoothness:
            return None
        diff = self.table[1:] - self.table[:-1]
        return self.smoothness * (diff.abs() if self.smoothness_norm == "l1" else diff.square()).sum()

    def _spline(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = (params.shape[-1] + 1) // 3
        return rational_quadratic_spline(
            inputs, params[..., :k], params[..., k : 2 * k], params[..., 2 * k :], inverse=inverse,
            tail_bound=self.tail_bound,
        )  # fmt: skip

    def _assemble(self, given: Tensor, other: Tensor) -> Tensor:
        return torch.stack((given, other) if self.given == 0 else (other, given), dim=1)

    def _map(self, v: Tensor, latent_to_data: bool) -> tuple[Tensor, Tensor]:
        given, other = v[:, self.given], v[:, 1 - self.given]
        out_given, ld_given = self._spline(given, self.marginal, latent_to_data)
        data_side, latent_side = (out_given, given) if latent_to_data else (given, out_given)
        at = data_side if self.read_at == "data" else latent_side
        out_other, ld_other = self._spline(other, self._conditioner(at), latent_to_data)
        return self._assemble(out_given, out_other), ld_given + ld_other

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data -> latent: ``(z, log|det dz/dx|)``."""
        return self._map(x, latent_to_data=False)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent -> data: ``(x, log|det dx/dz|)``; the given coordinate first, then its row."""
        return self._map(z, latent_to_data=True)


def make_grid_step(
    dim: int,
    *,
    layers: int = 1,
    given: int = 0,
    bins: int | None = None,
    knots: int = 512,
    tail_bound: float = 5.0,
    read_at: str = "data",
    smoothness: float = 5e-6,
    marginal_bins: int | None = 256,
    smoothness_norm: str = "l1",
    context_dim: int | None = None,
    num_classes: int | None = None,
    embed_dim: int | None = None,
) -> JKOStep:
    """One JKO step of ``layers`` ``GridRQSpline`` layers (2-D data only) conditioning on
    coordinates ``given``, then the other, in turn (``bins``: 64 when ``None``). Unconditional only.
    One layer per step by default: with two, the second layer's table is read at a coordinate the
    first one moves while both train, and on tree it lost 1.0 nats (BENCHMARKS.md s.4.0).
    By default 512 rows tied by a light prior on their total variation (``smoothness=5e-6``,
    ``smoothness_norm="l1"``) and a 256-bin spline for the given coordinate (``marginal_bins``;
    ``None``: ``bins``): on validation this beat the squared prior with 64 bins on all 3 tree
    seeds and 2 of 3 rose seeds (rose seed 2 by 0.0002 behind; BENCHMARKS.md s.4.0).

    >>> step = make_grid_step(2, layers=2, bins=16, knots=32)
    >>> step.kind, step.nfe, len(step.flows)
    ('grid', 2, 2)
    """
    # layers.py registers GridRQSpline (and map.py reads layers.py), so they import this module
    from .layers import build_layer
    from .map import JKOStep

    if dim != 2:
        raise ValueError(f"grid steps are for 2-D data (a table over one coordinate), got dim={dim}")
    if context_dim is not None or num_classes is not None or embed_dim is not None:
        raise ValueError(
            "grid steps take no context: use block='spline' or 'coupling' for a conditional flow"
        )
    positive_int("layers", layers)
    given = int(choice("given", given, (0, 1)))  # the layers' (given + i) % 2 would hide a bad value
    bins = 64 if bins is None else positive_int("bins", bins)
    specs = [
        {
            "class": "GridRQSpline",
            "kwargs": {
                "given": (given + i) % 2,
                "num_bins": bins,
                "knots": knots,
                "tail_bound": tail_bound,
                "read_at": read_at,
                "smoothness": smoothness,
                "marginal_bins": marginal_bins,
                "smoothness_norm": smoothness_norm,
            },
        }
        for i in range(layers)
    ]
    return JKOStep([build_layer(s) for s in specs], dim=dim, kind="grid")
