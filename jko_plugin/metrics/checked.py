r"""A W2 figure checked before it is shown: the Sinkhorn estimate, qualified only where it is off."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .wasserstein import wasserstein2

__all__ = ["W2_CHECK_RTOL", "checked_wasserstein2"]

#: A W2 whose Sinkhorn solve stopped early is reported as off when it differs from the exact
#: empirical W2 (POT's ``ot.emd2``) by more than this share.
W2_CHECK_RTOL = 0.01


def checked_wasserstein2(x: Tensor, y: Tensor, label: str = "W2") -> tuple[float, str | None]:
    """``wasserstein2(x, y)`` and, only if the solver stopped early and the figure is actually off
    (by more than ``W2_CHECK_RTOL`` from the exact W2 of the points, POT's ``ot.emd2``), one line
    that qualifies it, starting with ``label``. The solver's own warning is not passed on: the line
    says what it means for the figure shown. Other warnings pass through.

    >>> w2, note = checked_wasserstein2(torch.zeros(5, 2), torch.ones(5, 2))
    >>> round(w2, 3), note
    (1.414, None)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w2 = wasserstein2(x, y)
    stopped = [w for w in caught if "Sinkhorn stopped" in str(w.message)]
    for w in caught:
        if w not in stopped:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not stopped:
        return w2, None
    import ot

    a = x.new_full((x.shape[0],), 1.0 / x.shape[0]).double().cpu()
    b = y.new_full((y.shape[0],), 1.0 / y.shape[0]).double().cpu()
    cost = torch.cdist(x.double().cpu(), y.double().cpu()).square()
    exact = float(ot.emd2(a, b, cost, numItermax=10_000_000)) ** 0.5
    off = abs(w2 - exact) / max(exact, 1e-12)
    if off <= W2_CHECK_RTOL:
        return w2, None
    return w2, (
        f"{label} {w2:.4f} is approximate: the Sinkhorn solver stopped before converging, and the "
        f"exact W2 of these points is {exact:.4f} ({off:.1%} off)"
    )
