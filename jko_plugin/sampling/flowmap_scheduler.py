r"""``FlowMapScheduler``: sampling a two-time flow map in ``K`` jumps (SchedulerMixin + ConfigMixin)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from .._validate import positive, positive_int

__all__ = ["FlowMapScheduler", "FlowMapSchedulerOutput", "jump_grid"]


def jump_grid(
    total_time: float, steps: int | None = None, times: Sequence[float] | None = None
) -> list[tuple[float, float]]:
    """The jumps ``(s, t)`` from ``total_time`` down to 0: ``steps`` equal ones, or between
    consecutive ``times`` (which must decrease strictly from ``total_time`` to 0).

    >>> jump_grid(1.0, 2)
    [(1.0, 0.5), (0.5, 0.0)]

    Raises:
        ValueError: Both or neither of ``steps`` and ``times``, or a bad grid.
    """
    if (steps is None) == (times is None):
        raise ValueError(f"give exactly one of steps and times, got steps={steps!r}, times={times!r}")
    if times is None:
        k = positive_int("num_inference_steps", steps)
        grid = [total_time * (k - i) / k for i in range(k + 1)]
    else:
        grid = [float(t) for t in times]
        ok = len(grid) >= 2 and all(a > b for a, b in zip(grid, grid[1:]))
        if not ok or abs(grid[0] - total_time) > 1e-9 * total_time or grid[-1] != 0.0:
            raise ValueError(f"times must decrease strictly from {total_time} to 0, got {list(times)}")
        grid[0] = total_time
    return list(zip(grid[:-1], grid[1:]))


@dataclass
class FlowMapSchedulerOutput(BaseOutput):
    """Output of ``FlowMapScheduler.step``.

    Args:
        prev_sample: ``X(sample, s, t)``, the sample at the jump's end time ``t``.
    """

    prev_sample: Tensor


class FlowMapScheduler(SchedulerMixin, ConfigMixin):
    r"""Jumps of a learned flow map from ``T = total_time`` (noise) to 0 (data), ``K`` of them.

    ``timesteps`` holds one pair ``(s, t)`` per jump, shape ``(K, 2)``: the model (a
    ``FlowMapModel``) is given the pair and returns its secant velocity ``u = (X(x, s, t) - x) /
    (t - s)``, and ``step`` takes the Euler jump ``x + (t - s) u``, which is ``X(x, s, t)`` itself.
    So ``K`` steps of a pipeline are exactly ``K`` applications of the map, and ``K`` is chosen at
    sampling time, not at training time.

    Args:
        total_time: ``T``, the noise end of the model's time axis.
        num_inference_steps: Jumps of the default grid (``set_timesteps()`` without arguments).

    Raises:
        ValueError: ``total_time`` not > 0, ``num_inference_steps`` not a positive integer.

    Example:
        >>> s = FlowMapScheduler(num_inference_steps=2)
        >>> s.timesteps
        tensor([[1.0000, 0.5000],
                [0.5000, 0.0000]], dtype=torch.float64)
        >>> s.step(torch.ones(1, 2), s.timesteps[0], torch.zeros(1, 2)).prev_sample
        tensor([[-0.5000, -0.5000]])
    """

    _compatibles: list[str] = []
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, total_time: float = 1.0, num_inference_steps: int = 4) -> None:
        positive("total_time", total_time)
        positive_int("num_inference_steps", num_inference_steps)
        self.register_to_config(total_time=float(total_time))
        self.set_timesteps()

    @property
    def total_time(self) -> float:
        """``T``, the noise end."""
        return self.config.total_time

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        """Build ``timesteps`` (``(K, 2)`` float64 pairs ``(s, t)``, from ``T`` down to 0).

        Args:
            num_inference_steps: ``K`` equal jumps (default: the config's), exclusive with ``times``.
            device: Device of ``timesteps``.
            times: A custom grid, decreasing strictly from ``T`` to 0 (``K = len(times) - 1``).

        Raises:
            ValueError: A bad step count or grid, or both given.
        """
        if num_inference_steps is None and times is None:
            num_inference_steps = self.config.num_inference_steps
        pairs = jump_grid(self.total_time, num_inference_steps, times)
        self.num_inference_steps = len(pairs)
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
        self.timesteps = torch.tensor(pairs, dtype=dtype, device=device)

    def scale_model_input(self, sample: Tensor, timestep: Tensor | None = None) -> Tensor:
        """The identity: the model takes the sample as it is."""
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | Sequence[float],
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> FlowMapSchedulerOutput | tuple[Tensor]:
        """One jump: ``sample + (t - s) * model_output`` for ``timestep = (s, t)``.

        Args:
            model_output: The secant velocity ``u(sample, s, t)``, same shape as ``sample``.
            timestep: The pair ``(s, t)`` (a row of ``timesteps``).
            sample: The current sample, at time ``s``.
            generator: Unused (deterministic); accepted for pipeline compatibility.
            return_dict: Return a ``FlowMapSchedulerOutput`` (default) or ``(prev_sample,)``.

        Raises:
            ValueError: A ``timestep`` that is not a pair, or mismatched shapes.
        """
        pair = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)
        if pair.numel() != 2:
            raise ValueError(f"timestep must be a pair (s, t), got {timestep!r}")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}"
            )
        s, t = float(pair[0]), float(pair[1])
        x = sample + (t - s) * model_output
        return FlowMapSchedulerOutput(prev_sample=x) if return_dict else (x,)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        # SchedulerMixin looks names up in the diffusers namespace only, where this class is absent.
        return [cls]
