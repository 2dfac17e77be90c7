r"""A user's samples from ``.npy``/``.csv`` files, and a seeded train/test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._common import Seed, _rng, _tensor

__all__ = [
    "check_columns",
    "describe_scale",
    "load_samples",
    "split_labels",
    "train_test_split",
    "validation_split",
]


def load_samples(path: str | Path) -> Tensor:
    """A user's samples from a ``.npy`` file or a ``.csv`` file (comma-separated, optional header).

    Returns:
        Float32 tensor ``(n, d)``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unknown suffix, not 2-D, empty, or rows with NaN/inf (their count is given).
    """
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"path must end in .npy or .csv, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False)
    else:
        with open(path) as f:
            first = f.readline().strip()
        try:
            [float(v) for v in first.split(",")]
            skip = 0
        except ValueError:
            skip = 1  # a header line (or an empty file, caught below)
        data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"samples in {str(path)!r} must be a 2-D array (n, d), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"samples in {str(path)!r} are empty (shape {data.shape})")
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"samples in {str(path)!r} must be numeric, got dtype {data.dtype}")
    bad = int((~np.isfinite(data)).any(axis=1).sum())
    if bad:
        raise ValueError(f"samples in {str(path)!r} contain NaN or inf in {bad} of {data.shape[0]} rows")
    return _tensor(data)


def train_test_split(x: Tensor, test_fraction: float = 0.2, *, seed: Seed = 0) -> tuple[Tensor, Tensor]:
    """Shuffle the rows of ``x`` and split them into ``(train, test)`` with ``test_fraction`` held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n = x.shape[0]
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} of {n} rows leaves an empty part")
    kept, held = _shuffled_rows(n, n_test, seed, x.device)
    return x[kept], x[held]


def _shuffled_rows(n: int, n_held: int, seed: Seed, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row indices ``(kept, held)``: a seeded shuffle of ``range(n)``, its first ``n_held`` held out."""
    perm = torch.from_numpy(_rng(seed).permutation(n)).to(device)
    return perm[n_held:], perm[:n_held]


#: Share of the training points (at most ``VALIDATION_MAX`` rows) that ``validation_split`` holds
#: out, e.g. to choose how many trained JKO steps to keep (``JKOTrainer.keep_best_steps``).
VALIDATION_SHARE, VALIDATION_MAX = 0.1, 2000


def validation_split(
    x: Tensor, seed: Seed = 0, context: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(x_fit, x_val, context_fit, context_val)``: ``VALIDATION_SHARE`` of the rows (at most
    ``VALIDATION_MAX``, at least one) held out at random as ``train_test_split`` draws them, any
    context split with its rows.

    >>> x_fit, x_val, _, _ = validation_split(torch.randn(50, 2), seed=0)
    >>> x_fit.shape[0], x_val.shape[0]
    (45, 5)
    """
    n = x.shape[0]
    n_val = min(VALIDATION_MAX, max(1, round(VALIDATION_SHARE * n)))
    if n_val >= n:
        raise ValueError(f"{n} training rows are too few to hold out a validation split")
    fit, val = _shuffled_rows(n, n_val, seed, x.device)
    if context is None:
        return x[fit], x[val], None, None
    return x[fit], x[val], context[fit], context[val]


def check_columns(x: Tensor | np.ndarray, *, max_levels: int = 20) -> list[str]:
    """The column checks before fitting a density to ``x`` (n, d): the one place for them.

    A constant column makes any density on ``R^d`` degenerate (the likelihood runs off to
    infinity on it), so it is refused. A column with at most ``max_levels`` distinct values (and
    at least 10 rows per value) looks discrete: a continuous density puts narrow spikes on its
    values, which is allowed but reported.

    Returns:
        One warning line per discrete-looking column (empty if none).

    Raises:
        ValueError: Constant columns (listed with their value).

    >>> [w[:37] for w in check_columns(np.c_[np.arange(100.0), np.arange(100) % 2])]
    ['column 1 takes only 2 distinct values']
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {x.shape}")
    n = x.shape[0]
    constant = [j for j in range(x.shape[1]) if n > 1 and np.all(x[:, j] == x[0, j])]
    if constant:
        cols = ", ".join(f"{j} (every row is {x[0, j]:g})" for j in constant)
        plural = "columns" if len(constant) > 1 else "column"
        raise ValueError(
            f"{plural} {cols} {'are' if len(constant) > 1 else 'is'} constant: a density on it is "
            "degenerate; drop it and train on the other columns"
        )
    warnings = []
    for j in range(x.shape[1]):
        values = np.unique(x[:, j])
        if values.size <= max_levels and n >= 10 * values.size:
            step = float(np.diff(values).min())
            warnings.append(
                f"column {j} takes only {values.size} distinct values in {n} rows: it looks discrete, and a "
                f"continuous density puts narrow spikes there (dequantise it with uniform noise of one step, "
                f"x[:, {j}] + U(0, {step:g}), or drop it)"
            )
    return warnings


def describe_scale(x: Tensor | np.ndarray) -> str:
    """The data's scale in words, for messages: per-column standard deviations and the largest |value|.

    >>> describe_scale(np.array([[0.0, 10.0], [2.0, 30.0]]))
    'column standard deviations 1 to 10, largest |value| 30'
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    std, top = x.std(axis=0), np.abs(x).max()
    return f"column standard deviations {std.min():.3g} to {std.max():.3g}, largest |value| {top:.3g}"


def split_labels(data: Tensor, column: int) -> tuple[Tensor, Tensor]:
    """Separate a column of class labels from the samples: ``(x without the column, labels)``.

    Args:
        data: Samples ``(n, d + 1)`` (e.g. from ``load_samples``).
        column: Index of the label column (negative counts from the end, ``-1`` the last).

    Returns:
        ``x`` ``(n, d)`` and int64 labels ``(n,)``.

    Raises:
        ValueError: A column out of range, labels that are not whole numbers >= 0, or no column
            left for the samples.

    Example:
        >>> x, y = split_labels(torch.tensor([[0.5, 1.0], [0.25, 0.0]]), -1)
        >>> x.tolist(), y.tolist()
        ([[0.5], [0.25]], [1, 0])
    """
    d = data.shape[1]
    if isinstance(column, bool) or not isinstance(column, (int, np.integer)) or not -d <= column < d:
        raise ValueError(
            f"label column must be an integer in [{-d}, {d - 1}] for {d} columns, got {column!r}"
        )
    if d < 2:
        raise ValueError(f"the data has {d} column: nothing is left besides the labels")
    column = int(column) % d
    values = data[:, column].double()
    bad = (values != values.round()) | (values < 0)
    if bool(bad.any()):
        raise ValueError(
            f"label column {column} must hold whole numbers >= 0 (class 0, 1, ...), got "
            f"{float(values[bad][0])!r} in {int(bad.sum())} of {data.shape[0]} rows"
        )
    keep = [j for j in range(d) if j != column]
    return data[:, keep], values.long()
