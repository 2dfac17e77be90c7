r"""Our debiased Sinkhorn solvers behind ``metrics.sinkhorn``: dense, and sparse coarse-to-fine for d <= 3."""

# The dense solver computes its cost blocks on the fly or caches them; the sparse one works on
# k-d tree neighbourhoods. Both anneal with GeomLoss's formulas and run to a marginal tolerance
# instead of a fixed number of iterations. The functions that ``wasserstein`` and ``scores`` call
# keep their leading underscore: this module is private plumbing and ``__all__`` lists only its
# public constants.

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = [
    "CACHE_BYTES",
    "CACHE_MIN_DIM",
    "CHUNK",
    "DECIMATE",
    "DENSE_MAX",
    "MAX_ITER",
    "NEIGHBORS",
    "OMEGA",
    "SPARSE_MAX_DIM",
    "TRUNCATE",
]

MAX_ITER = 2000  # per temperature
OMEGA = 1.8  # over-relaxation of the cross updates (Thibault, Chizat, Dossal, Papadakis 2021)
CHUNK = 1 << 20  # entries per block of a dense cost matrix (4 MiB in float32)
CACHE_MIN_DIM = 8  # the dense solver caches its cost matrices from this dimension on...
CACHE_BYTES = 1 << 29  # ...when all four fit in 512 MiB
SPARSE_MAX_DIM = 3
DENSE_MAX = 400 * 400  # the sparse solver solves problems of at most this many pairs densely
NEIGHBORS = (16, 32, 64, 128)  # neighbour counts tried by the sparse solver
TRUNCATE = 3.0  # sparse kernels reach at least TRUNCATE * blur for 90% of the points
DECIMATE = 4  # points per cluster between the sparse solver's resolutions


# ---------------------------------------------------------------------------------------------
# Softmins f_i = -eps log sum_j exp(h_j - |p_i - q_j|^2 / (2 eps)): dense and sparse
# ---------------------------------------------------------------------------------------------
def _lse_rows_(a: Tensor) -> Tensor:
    """Row-wise log-sum-exp, overwriting ``a``. Arguments below -80 are clamped: exp() of very
    negative float32 numbers takes a slow path (10x), and e^-80 is nothing anyway."""
    m = a.amax(1, keepdim=True)
    return m.squeeze(1) + a.sub_(m).clamp_(min=-80.0).exp_().sum(1).log()


def _augmented(eps: float, p: Tensor, q: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    # h_j - |p_i - q_j|^2 / 2eps = [p_i / eps, 1] . [q_j, h_j - |q_j|^2 / 2eps] - |p_i|^2 / 2eps
    pa = torch.cat([p / eps, p.new_ones(p.shape[0], 1)], 1)
    qa = torch.cat([q, (h - q.square().sum(1) / (2 * eps))[:, None]], 1).T.contiguous()
    return pa, qa


def _softmin_dense(eps: float, p: Tensor, q: Tensor, h: Tensor) -> Tensor:
    """Dense softmin in blocks of rows, each one matrix product: no cost matrix is stored."""
    pa, qa = _augmented(eps, p, q, h)
    out, rows = p.new_empty(p.shape[0]), max(1, CHUNK // q.shape[0])
    for s in range(0, p.shape[0], rows):
        out[s : s + rows] = _lse_rows_(pa[s : s + rows] @ qa)
    return p.square().sum(1) / 2 - eps * out


def _dense_means(eps: float, p: Tensor, q: Tensor, h: Tensor) -> Tensor:
    """Barycentres of the rows of the dense plan from p to q."""
    pa, qa = _augmented(eps, p, q, h)
    out, rows = torch.empty_like(p), max(1, CHUNK // q.shape[0])
    for s in range(0, p.shape[0], rows):
        out[s : s + rows] = torch.softmax(pa[s : s + rows] @ qa, 1) @ q
    return out


def _half_sq_dist(p: Tensor, q: Tensor) -> Tensor:
    return (p.square().sum(1)[:, None] + q.square().sum(1) - 2 * p @ q.T).clamp_(min=0).div_(2)


class _Dense:
    """The four softmins of a debiased problem on full cost matrices: cached from dimension
    CACHE_MIN_DIM on (a matrix product then costs more than reading one) if they fit in
    CACHE_BYTES, otherwise recomputed block by block."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.pts = {"xy": (x, y), "yx": (y, x), "xx": (x, x), "yy": (y, y)}
        self.cost: dict[str, Tensor] = {}
        n, m = x.shape[0], y.shape[0]
        if x.shape[1] >= CACHE_MIN_DIM and (2 * n * m + n * n + m * m) * x.element_size() <= CACHE_BYTES:
            self.cost = {"xy": _half_sq_dist(x, y), "xx": _half_sq_dist(x, x), "yy": _half_sq_dist(y, y)}
            self.cost["yx"] = self.cost["xy"].T.contiguous()

    def __call__(self, key: str, eps: float, h: Tensor) -> Tensor:
        p, q = self.pts[key]
        if not self.cost:
            return _softmin_dense(eps, p, q, h)
        c, out, rows = self.cost[key], p.new_empty(p.shape[0]), max(1, CHUNK // q.shape[0])
        for s in range(0, p.shape[0], rows):
            out[s : s + rows] = _lse_rows_(torch.sub(h, c[s : s + rows], alpha=1.0 / eps))
        return -eps * out


def _padded(major: Tensor, minor: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Rows of a sparse pattern given as (major, minor) pairs sorted by major, padded."""
    degree = torch.bincount(major, minlength=size)
    pos = torch.arange(len(major), device=major.device) - (torch.cumsum(degree, 0) - degree)[major]
    idx = torch.zeros(size, int(degree.max()), dtype=torch.long, device=major.device)
    mask = torch.zeros(idx.shape, dtype=torch.bool, device=major.device)
    idx[major, pos], mask[major, pos] = minor, True
    return idx, mask


class _Pattern:
    """A truncated kernel between points p (rows) and q (columns): the union of the candidates
    ``cand_p`` of each row and ``cand_q`` of each column, stored padded both ways so that row
    and column softmins see the same entries (Sinkhorn needs one kernel)."""

    def __init__(self, p: Tensor, q: Tensor, cand_p: Tensor, cand_q: Tensor | None = None) -> None:
        n, m, dev = p.shape[0], q.shape[0], p.device
        keys = [torch.arange(n, device=dev).repeat_interleave(cand_p.shape[1]) * m + cand_p.reshape(-1)]
        if cand_q is not None:
            keys.append(
                cand_q.reshape(-1) * m + torch.arange(m, device=dev).repeat_interleave(cand_q.shape[1])
            )
        key = torch.unique(torch.cat(keys))
        r, c = key // m, key % m

        def half_cost(idx: Tensor, mask: Tensor, u: Tensor, v: Tensor) -> Tensor:
            return (u[:, None, :] - v[idx]).square().sum(-1).div_(2).masked_fill_(~mask, math.inf)

        self.ridx, rmask = _padded(r, c, n)
        self.rcost = half_cost(self.ridx, rmask, p, q)
        if cand_q is None:  # a point set with itself: symmetric
            self.cidx, self.ccost = self.ridx, self.rcost
        else:
            order = torch.argsort(c * n + r)
            self.cidx, cmask = _padded(c[order], r[order], m)
            self.ccost = half_cost(self.cidx, cmask, q, p)
        self.eps = math.nan

    def _lse(self, eps: float, h: Tensor, cols: bool) -> Tensor:
        if eps != self.eps:  # cost / eps and flat indices, once per temperature
            self.eps, self.scaled = eps, (self.rcost / eps, self.ccost / eps)
            self.flat = (self.ridx.view(-1).int(), self.cidx.reshape(-1).int())
        scaled = self.scaled[cols]
        return _lse_rows_(torch.index_select(h, 0, self.flat[cols]).view(scaled.shape).sub_(scaled))

    def rows(self, eps: float, h: Tensor) -> Tensor:
        return -eps * self._lse(eps, h, False)

    def cols(self, eps: float, h: Tensor) -> Tensor:
        return -eps * self._lse(eps, h, True)

    def means(self, eps: float, h: Tensor, target: Tensor, cols: bool) -> Tensor:
        """Barycentres of the plan's rows (or columns) in ``target``'s coordinates."""
        idx, cost = (self.cidx, self.ccost) if cols else (self.ridx, self.rcost)
        return torch.einsum("nk,nkd->nd", torch.softmax(h[idx] - cost / eps, 1), target[idx])


class _Sparse:
    def __init__(self, xy: _Pattern, xx: _Pattern, yy: _Pattern) -> None:
        self.pat = {"xy": (xy, False), "yx": (xy, True), "xx": (xx, False), "yy": (yy, False)}

    def __call__(self, key: str, eps: float, h: Tensor) -> Tensor:
        pattern, cols = self.pat[key]
        return pattern.cols(eps, h) if cols else pattern.rows(eps, h)


# ---------------------------------------------------------------------------------------------
# The debiased Sinkhorn loop: GeomLoss's formulas (Feydy 2020, Alg. 3.5), run to tolerance
# ---------------------------------------------------------------------------------------------
@dataclass
class _Potentials:
    f: Tensor  # x side of OT(a, b)
    g: Tensor  # y side of OT(a, b)
    fa: Tensor  # OT(a, a)
    gb: Tensor  # OT(b, b)


@dataclass
class _Level:
    pot: _Potentials
    iters: int
    err: float
    patterns: tuple[_Pattern, _Pattern, _Pattern] | None = None  # xy, xx, yy of a sparse level


def _schedule(start: float, blur: float, scaling: float) -> list[float]:
    """Temperatures eps = blur^2 for blurs from ``start`` down to ``blur``, a factor ``scaling`` apart."""
    out = [start]
    while out[-1] * scaling > blur:
        out.append(out[-1] * scaling)
    if out[-1] > blur or len(out) == 1:
        out.append(blur)
    return [s * s for s in out]


def _anneal(
    ops: _Dense | _Sparse,
    a_log: Tensor,
    b_log: Tensor,
    eps_list: list[float],
    pot: _Potentials,
    tol: float,
    target: float,
    final: bool = True,
) -> tuple[int, float]:
    """Iterate each temperature of ``eps_list`` (in place) until the L1 error of the plan's first
    marginal is below ``tol * sqrt(target / eps)``; returns the iterations and that error.

    The tighter tolerance at coarse temperatures matters: mass left misplaced there is misplaced
    over large distances, which finer levels (sharper or truncated kernels) correct only
    diffusively; with ``tol`` at every level, W2 between two samples of one law came out 2% low.
    """
    a = a_log.exp()
    floor = 100 * torch.finfo(a.dtype).eps
    iters, err, level_tol = 0, math.inf, tol
    for level, eps in enumerate(eps_list):
        level_tol = max(tol * min(1.0, math.sqrt(target / eps)), floor)
        prev = math.inf
        for it in range(MAX_ITER):
            ft = ops("xy", eps, b_log + pot.g / eps)
            err = float((torch.expm1((pot.f - ft) / eps).abs() * a).sum())
            if err < level_tol:
                break
            w = OMEGA if 0 < it and err < prev else 1.0  # over-relax while the error keeps falling
            prev, iters = err, iters + 1
            pot.f = pot.f + w * (ft - pot.f)
            pot.g = pot.g + w * (ops("yx", eps, a_log + pot.f / eps) - pot.g)
        last = final and level == len(eps_list) - 1
        for _ in range(MAX_ITER if last else 1):  # symmetric problems: averaged updates, fast
            fa, gb = ops("xx", eps, a_log + pot.fa / eps), ops("yy", eps, b_log + pot.gb / eps)
            change = max(float((fa - pot.fa).abs().max()), float((gb - pot.gb).abs().max())) / eps
            pot.fa, pot.gb = (pot.fa + fa) / 2, (pot.gb + gb) / 2
            if change < tol:
                break
    if err >= level_tol:
        warnings.warn(
            f"Sinkhorn stopped after {MAX_ITER} iterations with a marginal error of {err:.2g} "
            f"(tolerance {level_tol:.2g}): the divergence is approximate (try a larger blur)",
            RuntimeWarning,
            stacklevel=2,
        )
    return iters, err


def _diameter(x: Tensor, y: Tensor) -> float:
    """An upper bound on the distances between points (bounding box diagonal, or twice the
    largest distance to the box's centre if smaller)."""
    lo = torch.minimum(x.min(0).values, y.min(0).values)
    hi = torch.maximum(x.max(0).values, y.max(0).values)
    mid = (lo + hi) / 2
    radius = max(float((x - mid).norm(dim=1).max()), float((y - mid).norm(dim=1).max()))
    return min(float((hi - lo).norm()), 2 * radius)


def _solve_dense(
    x: Tensor, a: Tensor, y: Tensor, b: Tensor, blur: float, scaling: float, tol: float, target: float
) -> _Level:
    ops = _Dense(x, y)
    eps_list = _schedule(max(_diameter(x, y), blur), blur, scaling)
    a_log, b_log, eps = a.log(), b.log(), eps_list[0]
    pot = _Potentials(
        ops("xy", eps, b_log), ops("yx", eps, a_log), ops("xx", eps, a_log), ops("yy", eps, b_log)
    )
    return _Level(pot, *_anneal(ops, a_log, b_log, eps_list, pot, tol, target))


# ---------------------------------------------------------------------------------------------
# Sparse coarse-to-fine solver for low dimension (in the spirit of GeomLoss's "multiscale" and
# Schmitzer 2019), on k-d trees instead of KeOps
# ---------------------------------------------------------------------------------------------
def _knn(tree: cKDTree, q: Tensor, k: int) -> tuple[Tensor, np.ndarray]:
    """Indices (a tensor on q's device) and distances of the k nearest tree points to each q."""
    k = min(k, tree.n)
    dist, idx = tree.query(q.cpu().double().numpy(), k=k, workers=-1)
    idx = torch.from_numpy(np.asarray(idx, dtype=np.int64).reshape(q.shape[0], k)).to(q.device)
    return idx, np.asarray(dist).reshape(q.shape[0], k)


def _neighbours(tree: cKDTree, x: Tensor, blur: float) -> tuple[Tensor, float] | None:
    """The k nearest neighbours of each point and their median radius, for the smallest k in
    NEIGHBORS whose radius reaches TRUNCATE * blur for 90% of the points; None if none does."""
    if tree.n <= NEIGHBORS[-1]:
        return None
    idx, dist = _knn(tree, x, NEIGHBORS[-2])
    if np.quantile(dist[:, -1], 0.1) < TRUNCATE * blur:
        idx, dist = _knn(tree, x, NEIGHBORS[-1])
    for k in NEIGHBORS:
        if k <= dist.shape[1] and np.quantile(dist[:, k - 1], 0.1) >= TRUNCATE * blur:
            return idx[:, :k].contiguous(), float(np.median(dist[:, k - 1]))
    return None


def _cluster(x: Tensor, w: Tensor, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Voronoi cells of ``size`` random points: weighted centroids, masses, each point's cell."""
    centers = x[torch.randperm(x.shape[0], generator=gen)[:size].to(x.device)]
    _, label = torch.unique(_knn(cKDTree(centers.cpu().double().numpy()), x, 1)[0][:, 0], return_inverse=True)
    size = int(label.max()) + 1
    mass = torch.zeros(size, dtype=x.dtype, device=x.device).index_add_(0, label, w)
    sums = torch.zeros(size, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, label, x * w[:, None])
    return sums / mass[:, None], mass, label


def _extrapolate(
    eps: float, p: Tensor, label: Tensor, q: Tensor, h: Tensor, coarse: _Pattern | None, cols: bool = False
) -> tuple[Tensor, Tensor]:
    """Softmin and plan barycentres at fine points ``p`` from a potential on coarse points ``q``:
    over all of ``q``, or over the candidates of each point's cell in the coarse pattern."""
    if coarse is None:
        return _softmin_dense(eps, p, q, h), _dense_means(eps, p, q, h)
    idx, cost = (coarse.cidx, coarse.ccost) if cols else (coarse.ridx, coarse.rcost)
    idx, cost = idx[label], cost[label]
    arg = (h[idx] - (p[:, None, :] - q[idx]).square().sum(-1) / (2 * eps)).masked_fill_(
        torch.isinf(cost), -math.inf
    )
    means = torch.einsum("nk,nkd->nd", torch.softmax(arg, 1), q[idx])
    return -eps * _lse_rows_(arg), means


def _solve_sparse(
    x: Tensor,
    a: Tensor,
    y: Tensor,
    b: Tensor,
    blur: float,
    scaling: float,
    tol: float,
    target: float,
    gen: torch.Generator,
) -> _Level:
    """Solve on Voronoi clusters (recursively) down to the blur that the fine points'
    neighbourhoods resolve, extrapolate the potentials, then anneal on truncated kernels."""
    tx, ty = cKDTree(x.cpu().double().numpy()), cKDTree(y.cpu().double().numpy())
    near_x = _neighbours(tx, x, blur) if x.shape[0] * y.shape[0] > DENSE_MAX else None
    near_y = _neighbours(ty, y, blur) if near_x is not None else None
    if near_x is None or near_y is None:  # small problem, or blur too large for local kernels
        return _solve_dense(x, a, y, b, blur, scaling, tol, target)
    (nx, rx), (ny, ry) = near_x, near_y
    blur_c = max(blur, min(rx, ry) / 2)  # the sparse levels start at half the neighbourhood radius
    xc, ac, lx = _cluster(x, a, max(2, x.shape[0] // DECIMATE), gen)
    yc, bc, ly = _cluster(y, b, max(2, y.shape[0] // DECIMATE), gen)
    coarse = _solve_sparse(xc, ac, yc, bc, blur_c, scaling, tol, target, gen)
    cxy, cxx, cyy = coarse.patterns or (None, None, None)
    eps, c = blur_c**2, coarse.pot
    f, tmap = _extrapolate(eps, x, lx, yc, bc.log() + c.g / eps, cxy)
    g, smap = _extrapolate(eps, y, ly, xc, ac.log() + c.f / eps, cxy, cols=True)
    fa = _extrapolate(eps, x, lx, xc, ac.log() + c.fa / eps, cxx)[0]
    gb = _extrapolate(eps, y, ly, yc, bc.log() + c.gb / eps, cyy)[0]
    pot, a_log, b_log = _Potentials(f, g, fa, gb), a.log(), b.log()
    sym_x, sym_y = _Pattern(x, x, nx), _Pattern(y, y, ny)
    eps_list = _schedule(blur_c, blur, scaling)[1:] if blur < blur_c else [eps]
    iters, err = 0, math.inf
    for level, eps in enumerate(eps_list):
        last = level == len(eps_list) - 1
        if level == 0 or last:  # candidates: neighbours of where the plan sends each point, both ways
            cross = _Pattern(x, y, _knn(ty, tmap, ny.shape[1])[0], _knn(tx, smap, nx.shape[1])[0])
        it, err = _anneal(_Sparse(cross, sym_x, sym_y), a_log, b_log, [eps], pot, tol, target, last)
        iters += it
        if level == len(eps_list) - 2:
            tmap = cross.means(eps, b_log + pot.g / eps, y, cols=False)
            smap = cross.means(eps, a_log + pot.f / eps, x, cols=True)
    return _Level(pot, iters, err, (cross, sym_x, sym_y))
