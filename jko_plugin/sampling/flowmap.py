r"""A learned two-time flow map ``X(x, s, t)`` as a diffusers model: few-step sampling of an ODE.

Time runs as in ``sampling.field``: 0 is data, ``T = total_time`` is noise (``T = 1`` for a
flow-matching teacher, ``T_N`` for a JKO flow). The map is parametrised as

    ``X(x, s, t) = x + (t - s) u(x, s, t)``,

so ``X(x, s, s) = x`` exactly and ``u`` is the map's secant velocity ``(X(x, s, t) - x) / (t - s)``
(at ``t = s`` the velocity of the flow itself). ``forward(sample, timestep)`` returns ``u`` for a
``timestep`` holding the pair ``(s, t)``: ``FlowMapScheduler`` hands it the pairs of its grid and
takes one Euler jump of length ``t - s``, which lands exactly on ``X(x, s, t)``. ``K`` jumps from
``T`` to 0 cost ``K`` network evaluations per sample.

References:
    Boffi, Albergo, Vanden-Eijnden, "Flow map matching", arXiv:2406.07507 (2024).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from torch import Tensor, nn

from .._ops import ACTIVATIONS
from .._validate import check_batch, choice, positive, positive_int
from .model import VelocityOutput, _checkpoint_dtype

__all__ = ["FlowMapModel"]


class _MapMLP(nn.Module):
    """MLP ``(x, s, t) -> R^d`` with a Jacobian-vector product in the same pass (tangents by hand)."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.act = ACTIVATIONS[choice("activation", activation, ACTIVATIONS)]
        widths = (dim + 2, *hidden, dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dim = dim
        with torch.no_grad():  # start near the identity map
            self.layers[-1].weight.mul_(0.1)
            self.layers[-1].bias.zero_()

    def _pre(self, x: Tensor, s: float | Tensor, t: float | Tensor) -> Tensor:
        first = self.layers[0]
        w = first.weight
        if not isinstance(s, Tensor) and not isinstance(t, Tensor):  # one time pair: fold it into the bias
            bias = first.bias + s * w[:, self.dim] + t * w[:, self.dim + 1]
            return torch.addmm(bias, x, w[:, : self.dim].t())
        return (
            x @ w[:, : self.dim].t()
            + s[:, None] * w[:, self.dim]
            + t[:, None] * w[:, self.dim + 1]
            + (first.bias)
        )

    def forward(self, x: Tensor, s: float | Tensor, t: float | Tensor) -> Tensor:
        h = self.act.fn(self._pre(x, s, t))
        for layer in self.layers[1:-1]:
            h = self.act.fn(layer(h))
        return self.layers[-1](h)

    def jvp(
        self, x: Tensor, s: Tensor, t: Tensor, dx: Tensor, ds: Tensor, dt: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(out, d out)`` along the input tangent ``(dx, ds, dt)`` (rows independent)."""
        w = self.layers[0].weight
        pre = self._pre(x, s, t)
        dpre = dx @ w[:, : self.dim].t() + ds[:, None] * w[:, self.dim] + dt[:, None] * w[:, self.dim + 1]
        h = self.act.fn(pre)
        dh = self.act.grad(pre, h) * dpre
        for layer in self.layers[1:-1]:
            pre = layer(h)
            h = self.act.fn(pre)
            dh = self.act.grad(pre, h) * (dh @ layer.weight.t())
        last = self.layers[-1]
        return last(h), dh @ last.weight.t()


def _times(v: float | Tensor, x: Tensor) -> Tensor:
    """Times as a ``(batch,)`` tensor in ``x``'s dtype and device."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.expand(x.shape[0]) if v.dim() == 0 else v.reshape(-1)


class FlowMapModel(ModelMixin, ConfigMixin):
    r"""A two-time flow map ``X(x, s, t) = x + (t - s) u(x, s, t)`` on ``[0, total_time]``.

    A diffusers model (registered config, ``save_pretrained`` / ``from_pretrained`` with
    safetensors): ``JKOFlowPipeline(model=FlowMapModel(...), scheduler=FlowMapScheduler(...))``
    samples it in any number of steps. Train it with ``jko_plugin.distill.distill_flow_map``.

    Args:
        dim: Data dimension.
        hidden: Hidden widths of the MLP ``u`` (input ``(x, s / T, t / T)``).
        activation: ``"silu"`` (default), ``"tanh"``, ``"softplus"`` or ``"elu"``.
        total_time: ``T``, the noise end of the time axis (the teacher's).

    Raises:
        ValueError: A bad ``dim``, width, activation or ``total_time``.

    Example:
        >>> model = FlowMapModel(2, hidden=(16,))
        >>> x = torch.randn(4, 2)
        >>> torch.equal(model.flow_map(x, 0.3, 0.3), x)  # X(x, s, s) = x exactly
        True
        >>> model.sample(5, steps=2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """

    @register_to_config
    def __init__(
        self,
        dim: int = 2,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "silu",
        total_time: float = 1.0,
    ) -> None:
        super().__init__()
        positive_int("dim", dim)
        hidden = [positive_int(f"hidden[{i}]", h) for i, h in enumerate(hidden)]
        if not hidden:
            raise ValueError("hidden must name at least one hidden layer width, got ()")
        self.total_time = positive("total_time", total_time)
        self.register_to_config(hidden=hidden, total_time=self.total_time)
        self.net = _MapMLP(dim, hidden, activation)
        self.dim = dim

    def secant(self, x: Tensor, s: float | Tensor, t: float | Tensor) -> Tensor:
        """``u(x, s, t) = (X(x, s, t) - x) / (t - s)``; ``s``, ``t`` floats or ``(batch,)`` tensors."""
        T = self.total_time
        if isinstance(s, Tensor) or isinstance(t, Tensor):
            return self.net(x, _times(s, x) / T, _times(t, x) / T) / T
        return self.net(x, float(s) / T, float(t) / T) / T

    def flow_map(self, x: Tensor, s: float | Tensor, t: float | Tensor) -> Tensor:
        """``X(x, s, t)``: where the flow takes ``x`` from time ``s`` to time ``t``, shape ``(batch, d)``."""
        dt = t - s if not isinstance(t, Tensor) and not isinstance(s, Tensor) else _times(t, x) - _times(s, x)
        return x + (dt if not isinstance(dt, Tensor) else dt[:, None]) * self.secant(x, s, t)

    def flow_map_jvp(
        self, x: Tensor, s: Tensor, t: Tensor, dx: Tensor, ds: Tensor, dt: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``X(x, s, t)`` and its derivative along ``(dx, ds, dt)``; all times ``(batch,)`` tensors.

        With ``(0, 0, 1)``: ``d/dt X`` (the Lagrangian residual's term); with ``(b(x, s), 1, 0)``:
        ``d/ds X + (grad_x X) b`` (the Eulerian one)."""
        T = self.total_time
        net, dnet = self.net.jvp(x, s / T, t / T, dx, ds / T, dt / T)
        u, du = net / T, dnet / T
        gap = (t - s)[:, None]
        return x + gap * u, dx + (dt - ds)[:, None] * u + gap * du

    def forward(
        self, sample: Tensor, timestep: Tensor | Sequence[float], return_dict: bool = True
    ) -> VelocityOutput | tuple[Tensor]:
        """The secant velocity ``u(sample, s, t)`` for ``timestep = (s, t)``: shape ``(2,)`` or
        ``(batch, 2)`` (what ``FlowMapScheduler.timesteps`` holds). Returns ``VelocityOutput``
        (as ``JKOFlowModel`` does) or, with ``return_dict=False``, the tuple ``(velocity,)``.

        Raises:
            ValueError: A bad ``sample`` or a ``timestep`` that is not one pair or one per row.
        """
        check_batch(sample, self.dim, "sample")
        pair = torch.as_tensor(timestep, dtype=torch.float64)
        if pair.shape == (2,):
            u = self.secant(sample, float(pair[0]), float(pair[1]))
        elif pair.shape == (sample.shape[0], 2):
            u = self.secant(sample, pair[:, 0].to(sample), pair[:, 1].to(sample))
        else:
            raise ValueError(
                f"timestep must be a pair (s, t) or one pair per row, got shape {tuple(pair.shape)}"
            )
        return VelocityOutput(sample=u) if return_dict else (u,)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        steps: int | None = None,
        times: Sequence[float] | None = None,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """``n`` samples: ``latents`` (default ``N(0, I)`` from ``generator``) mapped from ``T`` to 0
        in ``steps`` equal jumps (default 4), or along ``times`` (decreasing from ``T`` to 0). NFE:
        the jumps."""
        from .flowmap_scheduler import jump_grid

        if steps is None and times is None:
            steps = 4

        p = next(self.parameters())
        if latents is None:
            latents = torch.randn(
                positive_int("n", n), self.dim, generator=generator, dtype=p.dtype, device=p.device
            )
        x = latents
        for s, t in jump_grid(self.total_time, steps, times):
            x = self.flow_map(x, s, t)
        return x

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> FlowMapModel:
        """Load a ``save_pretrained`` folder (safetensors only), keeping the checkpoint's float dtype
        unless ``torch_dtype`` is given; works offline (``HF_HUB_OFFLINE=1``).

        Raises:
            ValueError: ``use_safetensors=False`` (that would unpickle).
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("FlowMapModel loads safetensors only (use_safetensors=False would unpickle)")
        kwargs["use_safetensors"] = True
        kwargs.setdefault("low_cpu_mem_usage", False)
        weights = (
            Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "") / SAFETENSORS_WEIGHTS_NAME
        )
        if weights.is_file() and kwargs.get("torch_dtype") is None and kwargs.get("dtype") is None:
            kwargs["torch_dtype"] = _checkpoint_dtype(weights)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
