r"""The package's one set of argument checks; each raises ``ValueError`` naming parameter and value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_points",
    "check_batch",
    "check_context",
    "check_timestep",
    "choice",
    "positive",
    "positive_int",
]


def positive(name: str, value: object, *, below: float | None = None) -> float:
    """``value`` as a finite float > 0 (and < ``below`` if given).

    >>> positive("lr", 3e-3)
    0.003
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not (math.isfinite(float(value)) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be below {below}, got {value!r}")
    return float(value)


def positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum`` (booleans refused).

    >>> positive_int("steps", 4)
    4
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def choice(name: str, value: object, choices: Collection) -> object:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them.

    >>> choice("solver", "rk4", ("euler", "rk4"))
    'rk4'
    """
    try:
        known = value in choices
    except TypeError:  # an unhashable value against a dict or set
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_batch(x: Tensor, dim: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a finite tensor of shape ``(batch, dim)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, {dim}), got shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"{name} has trailing dimension {x.shape[1]}, the flow expects {dim}")
    # Inside torch.compile a data-dependent check would split the graph; the trainer checks its data once.
    if not torch.compiler.is_compiling() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} of {x.shape[0]} rows")


def as_points(
    x: object,
    name: str = "x",
    *,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    upcast_half: bool = False,
) -> Tensor:
    """Points ``(n, d)`` from a tensor or array: 2-D, non-empty, finite, floating (detached).

    Integer input becomes float64 (or ``dtype``); with ``upcast_half``, floats narrower than
    float32 (float16, bfloat16, float8) become float32; ``dtype`` converts the result.

    >>> as_points(np.zeros((3, 2))).shape
    torch.Size([3, 2])
    >>> as_points(torch.zeros(3, 2, dtype=torch.float16), upcast_half=True).dtype
    torch.float32
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name} must be 2-D {want}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the model's is {dim}")
    x = x.detach()
    if not x.is_floating_point():
        x = x.to(dtype or torch.float64)
    elif upcast_half and x.dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        raise ValueError(f"{name} contains NaN or inf in {int(bad.sum())} of {x.shape[0]} rows")
    return x if dtype is None else x.to(dtype)


def check_timestep(timestep: object, batch: int) -> float | Tensor:
    """A diffusers ``timestep`` as one float, or as a ``(batch,)`` tensor when its rows differ.

    Accepted: a number, a one-element tensor, or a tensor of shape ``(batch,)`` (what a pipeline
    passes; all-equal rows give one float).

    >>> check_timestep(torch.tensor([0.5, 0.5]), 2), check_timestep(torch.tensor([0.1, 0.5]), 2)
    (0.5, tensor([0.1000, 0.5000]))
    """
    if isinstance(timestep, Tensor):
        if timestep.numel() == 1:
            return float(timestep.reshape(()))
        if timestep.shape != (batch,):
            raise ValueError(
                f"timestep must be a number, a one-element tensor or of shape (batch,) = ({batch},), "
                f"got shape {tuple(timestep.shape)}"
            )
        if not torch.isfinite(timestep).all():
            raise ValueError(f"timestep must be finite, got {timestep}")
        return float(timestep[0]) if bool((timestep == timestep[0]).all()) else timestep
    if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
        raise ValueError(f"timestep must be a number or a tensor, got {timestep!r}")
    return float(timestep)


def check_context(
    context: object,
    batch: int,
    *,
    num_classes: int | None = None,
    context_dim: int | None = None,
    name: str = "context",
) -> Tensor:
    """The condition of ``batch`` rows for a model conditioned on ``num_classes`` class labels or on a
    continuous context of ``context_dim`` features (exactly one of the two).

    Labels: an integer tensor (or array) of shape ``(batch,)`` with values in ``[0, num_classes)``;
    a continuous context: a finite floating tensor of shape ``(batch, context_dim)``.

    Raises:
        ValueError: ``None``, another type, shape or dtype, a label out of range, NaN or inf.

    >>> check_context(torch.tensor([0, 2]), 2, num_classes=3).tolist()
    [0, 2]
    >>> check_context(torch.tensor([0, 3]), 2, num_classes=3)
    Traceback (most recent call last):
    ...
    ValueError: context holds labels outside [0, 3): 3 (in 1 of 2 rows)
    """
    if (num_classes is None) == (context_dim is None):
        raise ValueError("check_context needs exactly one of num_classes and context_dim")
    want = (
        f"class labels of shape ({batch},)" if num_classes is not None else f"shape ({batch}, {context_dim})"
    )
    if context is None:
        raise ValueError(f"this model is conditional: pass {name} ({want})")
    if isinstance(context, np.ndarray):
        context = torch.from_numpy(context)
    if not isinstance(context, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor or numpy array ({want}), got {type(context).__name__}"
        )
    if num_classes is not None:
        if context.is_floating_point() or context.is_complex() or context.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels, got dtype {context.dtype}")
        if tuple(context.shape) != (batch,):
            raise ValueError(
                f"{name} must have shape ({batch},) (one label per row), got {tuple(context.shape)}"
            )
        bad = (context < 0) | (context >= num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"{name} holds labels outside [0, {num_classes}): {int(context[bad][0])} "
                f"(in {int(bad.sum())} of {batch} rows)"
            )
        return context.long()
    if not context.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of {want}, got dtype {context.dtype}")
    if tuple(context.shape) != (batch, context_dim):
        raise ValueError(f"{name} must have {want}, got {tuple(context.shape)}")
    bad = ~torch.isfinite(context).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or inf in {int(bad.sum())} of {batch} rows")
    return context
