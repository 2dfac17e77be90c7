r"""JKO-iFlow's 2-D ``rose`` and ``tree``: one Gaussian per pixel of a picture, with the exact log-density.

The convention is read from ``inf_train_gen`` in ``main.py`` of the JKO-iFlow reference code
(https://github.com/hamrel-cxu/JKO-iFlow, commit 7e6e675; Xu, Cheng and Xie, "Normalizing flow neural
networks by JKO scheme", NeurIPS 2023), which draws its 2-D data from ``img_rose.png`` and
``img_tree.png``:

- The picture is opened with Pillow, ``rotate(180)``, ``transpose(0)`` (``FLIP_LEFT_RIGHT``) and
  ``convert("L")``. Rotating by 180 degrees and then mirroring left-right turns it upside down: row 0
  of the array is the picture's bottom row. ``"L"`` is ITU-R 601-2 luma; both PNGs are grey
  (R = G = B everywhere, the tree's alpha is 255 everywhere), so it is the grey level itself.
- With ``h, w = img.shape``, ``xx = linspace(-4, 4, w)`` and ``yy = linspace(-4, 4, h)`` (endpoints
  included: pixel spacing ``8 / (w - 1)``), ``meshgrid(xx, yy)`` ("xy" indexing) gives the means: the
  first coordinate x runs along the columns (width), the second y along the rows of the flipped
  array, so y points up the picture and the picture appears upright.
- Weights ``img.max() - img`` normalised: dark pixels carry mass, pixels at the maximum none.
- Samples ``randn * std + mean`` with ``std = [8 / w / 2, 8 / h / 2]``: a per-axis *standard
  deviation* (``4 / w`` in x, ``4 / h`` in y, about half the pixel spacing), not a variance.
- JKO-iFlow neither standardises nor rescales the points: NLLs are in these coordinates.

The true NLL (the mixture's entropy, from 10^6 Monte Carlo points) is 2.484 +- 0.001 for rose and
1.953 +- 0.001 for tree; on the 4000 held-out points of ``jko-flow compare --seed 0`` (drawn with
seed 1) it is 2.487 and 1.953.

Here the mixture keeps only the pixels of nonzero weight and draws from a numpy ``Generator``: the same
distribution, not the same stream of numbers. The pictures ship in ``data/jko_iflow_2d.npz`` (grey
levels as stored in the PNGs, row 0 at the top; written by ``tools/pack_pixel_images.py``), so no
imaging library and no download is needed. Origin and licence: ``data/README.md``; the JKO-iFlow
repository states no licence (no LICENSE file in any of its commits), so the pictures are the authors'
and are redistributed here, with attribution, as benchmark data only.
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from ._common import Seed
from .mixture import GaussianMixture

__all__ = [
    "PIXEL_IMAGES",
    "PixelMixture",
    "pixel_image",
    "pixel_mixture",
    "rose",
    "rose_log_prob",
    "tree",
    "tree_log_prob",
]

#: The packaged pictures, by name.
PIXEL_IMAGES = ("rose", "tree")
_ARCHIVE = "jko_iflow_2d.npz"
# float64 numbers per chunk (32 MiB): bounded memory whatever the number of points.
_CHUNK = 1 << 22
# log_prob sums the (2 r + 1)^2 pixels nearest a point. Pixel spacing is over twice the standard
# deviation (8 / (w - 1) against 4 / w), so every pixel outside that window lies more than 2 r + 1
# deviations away and all of them together add less than exp(-(2 r + 1)^2 / 2) (weights sum to 1).
# Where the window's sum exceeds that bound by 2^60 the rest is below float64 rounding; elsewhere
# (points far from any dark pixel) the sum runs over every pixel.
_RADIUS = 8
_EXACT_ABOVE = -((2 * _RADIUS + 1) ** 2) / 2 + 60 * math.log(2)


class PixelMixture(GaussianMixture):
    """One axis-aligned Gaussian per pixel of a greyscale picture, drawn as JKO-iFlow draws rose and tree.

    The picture is turned upside down (Pillow's ``rotate(180)`` then ``FLIP_LEFT_RIGHT``); pixel
    ``(i, j)`` of the result becomes the mean ``(linspace(-4, 4, w)[j], linspace(-4, 4, h)[i])`` with
    weight proportional to ``max - grey[i, j]`` and standard deviations ``(4 / w, 4 / h)``. Pixels of
    zero weight are dropped. ``log_prob`` is exact to float64 rounding; ``mean`` and ``covariance``
    are the exact moments.

    Args:
        grey: Greyscale picture ``(h, w)`` as displayed (row 0 at the top), integer or float levels,
            at least 2 x 2 and not constant.

    Raises:
        ValueError: If ``grey`` is not a finite 2-D array of at least 2 x 2 or is constant.

    Example:
        >>> mix = PixelMixture(np.array([[0, 255, 255], [255, 255, 128]], dtype=np.uint8))
        >>> mix.means.tolist()  # the picture upright: its dark top-left pixel sits at (-4, 4)
        [[4.0, -4.0], [-4.0, 4.0]]
        >>> [round(w, 4) for w in mix.weights.tolist()]  # (255 - 128, 255 - 0) / 382
        [0.3325, 0.6675]
        >>> mix.std.tolist()
        [1.3333333333333333, 2.0]
    """

    def __init__(self, grey: np.ndarray) -> None:
        grey = np.asarray(grey)
        if grey.ndim != 2 or min(grey.shape) < 2 or not np.issubdtype(grey.dtype, np.number):
            raise ValueError(f"grey must be a numeric (h, w) picture with h, w >= 2, got shape {grey.shape}")
        levels = grey.astype(np.float64)
        if not np.isfinite(levels).all() or levels.min() == levels.max():
            raise ValueError("grey must be finite and not constant (a constant picture has no mass)")
        upright = levels[::-1]  # rotate(180) + FLIP_LEFT_RIGHT: row 0 is now the picture's bottom
        h, w = upright.shape
        weight = upright.max() - upright
        rows, cols = np.nonzero(weight)
        xs, ys = np.linspace(-4.0, 4.0, w), np.linspace(-4.0, 4.0, h)
        std = torch.tensor([8.0 / w / 2.0, 8.0 / h / 2.0], dtype=torch.float64)
        super().__init__(
            torch.from_numpy(np.stack([xs[cols], ys[rows]], 1)),
            torch.diag(std).expand(len(rows), 2, 2),
            torch.from_numpy(weight[rows, cols]),
        )
        self.std = std
        self.image = grey.copy()
        self._grid = (torch.from_numpy(xs), torch.from_numpy(ys))
        self._log_w_image = torch.log(torch.from_numpy(weight / weight.sum()))  # -inf at white pixels
        self._log_norm = float(torch.log(std).sum()) + math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` in float64 (to rounding: see ``_RADIUS``), ``(n,)`` in ``x``'s dtype.

        Raises:
            ValueError: If ``x`` is not of shape ``(n, 2)``.
        """
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"x must have shape (n, 2), got {tuple(x.shape)}")
        y = x.detach().to(torch.float64).cpu()
        rows = _CHUNK // (2 * _RADIUS + 1) ** 2
        log_sum = torch.cat([self._window_log_sum(c) for c in y.split(rows)]) if len(y) else y[:, 0]
        far = log_sum < _EXACT_ABOVE
        if bool(far.any()):
            log_sum[far] = self._full_log_sum(y[far])
        return (log_sum - self._log_norm).to(dtype=x.dtype, device=x.device)

    def _axis_terms(self, coord: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        """``-((coord - centre) / std)^2 / 2`` at the 2r + 1 nearest centres (-inf off the image); indices."""
        centres, n = self._grid[axis], len(self._grid[axis])
        nearest = torch.nan_to_num((coord + 4.0) * (n - 1) / 8.0, nan=-_RADIUS - 1.0).round()
        idx = nearest.clamp(-_RADIUS - 1, n + _RADIUS).long()[:, None] + torch.arange(-_RADIUS, _RADIUS + 1)
        inside = (idx >= 0) & (idx < n)
        idx = idx.clamp(0, n - 1)
        terms = -0.5 * ((coord[:, None] - centres[idx]) / self.std[axis]).square()
        return terms.masked_fill(~inside, -math.inf), idx

    def _window_log_sum(self, y: Tensor) -> Tensor:
        ax, cols = self._axis_terms(y[:, 0], 0)
        ay, rows = self._axis_terms(y[:, 1], 1)
        terms = self._log_w_image[rows[:, :, None], cols[:, None, :]] + ay[:, :, None] + ax[:, None, :]
        return torch.logsumexp(terms.flatten(1), dim=1)

    def _full_log_sum(self, y: Tensor) -> Tensor:
        z, centres, log_w = y / self.std, self.means / self.std, torch.log(self.weights)
        out = []
        for c in z.split(max(1, _CHUNK // len(log_w))):
            sq = torch.cdist(c, centres, compute_mode="donot_use_mm_for_euclid_dist").square_()
            out.append(torch.logsumexp(sq.mul_(-0.5).add_(log_w), dim=1))
        return torch.cat(out)


def pixel_image(name: str) -> np.ndarray:
    """The packaged greyscale picture ``name`` (``"rose"`` or ``"tree"``), uint8 ``(h, w)``, row 0 at the top.

    Raises:
        ValueError: If ``name`` is not one of ``PIXEL_IMAGES``.
    """
    if name not in PIXEL_IMAGES:
        raise ValueError(f"picture must be one of {list(PIXEL_IMAGES)}, got {name!r}")
    with (resources.files(__package__) / "data" / _ARCHIVE).open("rb") as f, np.load(f) as archive:
        return archive[name].copy()


@cache
def pixel_mixture(name: str) -> PixelMixture:
    """The ``PixelMixture`` of the packaged picture ``name`` (built once, then cached).

    Raises:
        ValueError: If ``name`` is not one of ``PIXEL_IMAGES``.
    """
    return PixelMixture(pixel_image(name))


def rose(n: int, *, seed: Seed) -> Tensor:
    """``n`` points of JKO-iFlow's rose (11,677 pixel Gaussians on ``[-4, 4]^2``), float32 ``(n, 2)``.

    Example:
        >>> x = rose(4000, seed=1)
        >>> round(float(-rose_log_prob(x).mean()), 2)  # the true NLL of these points
        2.49
    """
    return pixel_mixture("rose").sample(n, seed=seed)


def rose_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of ``rose``, ``(n, 2) -> (n,)``."""
    return pixel_mixture("rose").log_prob(x)


def tree(n: int, *, seed: Seed) -> Tensor:
    """``n`` points of JKO-iFlow's fractal tree (21,885 pixel Gaussians on ``[-4, 4]^2``), float32."""
    return pixel_mixture("tree").sample(n, seed=seed)


def tree_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of ``tree``, ``(n, 2) -> (n,)``."""
    return pixel_mixture("tree").log_prob(x)
