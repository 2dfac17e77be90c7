r"""A trained JKO flow as a diffusers model: the blocks' velocity fields on the flow's time axis."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import normflows as nf
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from normflows.flows import Flow
from normflows.utils.masks import create_alternating_binary_mask
from torch import Tensor, nn

from ._ops import check_choice
from .block import JKOBlock, check_batch
from .scheduler import BLOCK_TYPES, BOUNDARY_EPS, _boundaries, _positive
from .step import JKOStep

__all__ = ["JKOFlowModel", "LAYER_TYPES", "describe_layer", "build_layer"]


def _activation_name(act: object) -> str:
    cls = type(act)
    if getattr(nn, cls.__name__, None) is not cls or repr(act) != repr(cls()):
        raise ValueError(f"only torch.nn activations with default arguments can be saved, got {act!r}")
    return cls.__name__


def _net_args(blocks: nn.ModuleList) -> dict:
    first = blocks[0] if len(blocks) else None
    return {
        "num_blocks": len(blocks),
        "activation": _activation_name(first.activation) if first is not None else "ReLU",
        "dropout_probability": float(first.dropout.p) if first is not None else 0.0,
    }


def _check_spline(tails: object, tail_bound: object) -> float:
    if tails != "linear" or isinstance(tail_bound, Tensor):
        raise ValueError(f"only splines with linear tails and a scalar bound can be saved, got {tails!r}")
    return float(tail_bound)


def _describe_arqs(layer: Flow) -> dict:
    t = layer.mprqat
    made = t.autoregressive_net
    context = made.context_layer.in_features if hasattr(made, "context_layer") else None
    return {
        "num_input_channels": made.initial_layer.in_features,
        "num_hidden_channels": made.initial_layer.out_features,
        "num_context_channels": context,
        "num_bins": t.num_bins,
        "tail_bound": _check_spline(t.tails, t.tail_bound),
        **_net_args(made.blocks),
    }  # the MADE masks (and permute_mask's effect) are buffers, restored with the weights


def _describe_crqs(layer: Flow) -> dict:
    c = layer.prqct
    net = c.transform_net
    # The mask is create_alternating_binary_mask(d, even=reverse_mask); its zeros are the identity features.
    ident = c.identity_features.tolist()
    options = [
        r
        for r in (False, True)
        if (create_alternating_binary_mask(c.features, even=r) <= 0).nonzero().flatten().tolist() == ident
    ]
    if not options:
        raise ValueError("only CoupledRationalQuadraticSpline layers with an alternating mask can be saved")
    reverse = options[0]
    return {
        "num_input_channels": c.features,
        "num_hidden_channels": net.hidden_features,
        "num_context_channels": net.context_features,
        "num_bins": c.num_bins,
        "tail_bound": _check_spline(c.tails, c.tail_bound),
        "reverse_mask": reverse,
        **_net_args(net.blocks),
    }


def _describe_affine(layer: Flow) -> dict:
    return {
        "shape": list(layer.s.shape[1:]),
        "scale": isinstance(layer.s, nn.Parameter),
        "shift": isinstance(layer.t, nn.Parameter),
    }


def _with_activation(cls: type) -> Callable[..., Flow]:
    def build(activation: str = "ReLU", **kwargs: Any) -> Flow:
        act = getattr(nn, activation, None)
        if not (isinstance(act, type) and issubclass(act, nn.Module)):
            raise ValueError(f"activation must name a torch.nn module, got {activation!r}")
        return cls(activation=act, **kwargs)

    return build


#: normflows layers a ``JKOStep`` may hold in a saved model: class name -> (class, describe, build).
#: ``describe(layer)`` returns JSON constructor arguments; the weights travel separately.
LAYER_TYPES: dict[str, tuple[type, Callable[[Flow], dict], Callable[..., Flow]]] = {
    "AutoregressiveRationalQuadraticSpline": (
        nf.flows.AutoregressiveRationalQuadraticSpline,
        _describe_arqs,
        _with_activation(nf.flows.AutoregressiveRationalQuadraticSpline),
    ),
    "CoupledRationalQuadraticSpline": (
        nf.flows.CoupledRationalQuadraticSpline,
        _describe_crqs,
        _with_activation(nf.flows.CoupledRationalQuadraticSpline),
    ),
    "LULinearPermute": (
        nf.flows.LULinearPermute,
        lambda layer: {"num_channels": layer.linear.features},
        nf.flows.LULinearPermute,
    ),
    "Permute": (
        nf.flows.Permute,
        lambda layer: {"num_channels": layer.num_channels, "mode": layer.mode},
        nf.flows.Permute,
    ),
    "ActNorm": (nf.flows.ActNorm, _describe_affine, nf.flows.ActNorm),
    "AffineConstFlow": (nf.flows.AffineConstFlow, _describe_affine, nf.flows.AffineConstFlow),
}


def describe_layer(layer: Flow) -> dict:
    """``{"class": name, "kwargs": {...}}``: a JSON description of a normflows layer in ``LAYER_TYPES``.

    Raises:
        ValueError: The layer's class (exactly) is not in ``LAYER_TYPES``, or uses an option
            that cannot be described (non-linear spline tails, a custom activation).
    """
    name = type(layer).__name__
    if name not in LAYER_TYPES or type(layer) is not LAYER_TYPES[name][0]:
        raise ValueError(f"cannot save a {type(layer).__qualname__} layer; supported: {sorted(LAYER_TYPES)}")
    return {"class": name, "kwargs": LAYER_TYPES[name][1](layer)}


def build_layer(spec: dict) -> Flow:
    """Rebuild a freshly initialised layer from ``describe_layer``'s output."""
    name = check_choice("layer class", spec.get("class"), LAYER_TYPES)
    return LAYER_TYPES[name][2](**spec.get("kwargs", {}))


def _describe_block(block: Flow) -> dict:
    if isinstance(block, JKOBlock):
        return {"type": "ode", "kwargs": block.config()}
    if isinstance(block, JKOStep):
        return {"type": "map", "dim": block.dim, "layers": [describe_layer(f) for f in block.flows]}
    raise ValueError(f"each flow layer must be a JKOBlock or a JKOStep, got {type(block).__qualname__}")


def _build_block(spec: dict, dim: int) -> Flow:
    if not isinstance(spec, dict):
        raise ValueError(f"a block description must be a dict, got {spec!r}")
    kind = check_choice("block type", spec.get("type"), BLOCK_TYPES)
    if kind == "ode":
        block = JKOBlock(**spec["kwargs"])
    else:
        block = JKOStep([build_layer(s) for s in spec["layers"]], dim=spec["dim"])
    if block.dim != dim:
        raise ValueError(f"a block has dim {block.dim}, the model has dim {dim}")
    return block


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * math.log(2 * math.pi))


class JKOFlowModel(ModelMixin, ConfigMixin):
    r"""A JKO flow's blocks as one diffusers model: ``forward(sample, timestep)`` is the velocity ``dx/dt``.

    Block k (k = 1 is the data side) lives on ``[T_{k-1}, T_k]`` of the model's time axis,
    ``T_k = h_1 + ... + h_k``. ``flows`` (the block modules) keeps normflows' order (``flows[0]``
    next to the latent, i.e. block N), so ``to_normflows()`` rebuilds the same ``nf.NormalizingFlow``.

    ``forward`` finds the block with ``T_{k-1} < t <= T_k`` (``t = 0``: block 1) and returns
    - for a ``JKOBlock``: its velocity at normalised time ``s = (t - T_{k-1}) / h_k``, divided by
      ``h_k`` (the block's documented convention; the block's own ``interval`` is not used, so a
      float32 interval buffer cannot shift the time axis);
    - for a ``JKOStep`` (a discrete map ``F``, latent -> data): the secant velocity
      ``(x - F(x)) / h_k``, valid only at ``t = T_k``, where ``JKOScheduler`` evaluates it and
      jumps by ``-h_k`` to land on ``F(x)``.

    Args:
        dim: Data dimension.
        blocks: One description per block in normflows order: ``{"type": "ode", "kwargs":
            JKOBlock.config()}`` or ``{"type": "map", "dim": d, "layers": [describe_layer(f), ...]}``.
        step_sizes: ``[h_1, ..., h_N]``, data side first (as in ``JKOScheduler``).

    Raises:
        ValueError: ``len(step_sizes) != len(blocks)``, a step size <= 0, an unknown block or layer
            type, or a block whose dimension is not ``dim``.

    Example:
        >>> import normflows as nf
        >>> flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False),
        ...                           [JKOBlock(2, interval=(0.25, 0.6)), JKOBlock(2, interval=(0.0, 0.25))])
        >>> model = JKOFlowModel.from_normflows(flow)
        >>> model(torch.randn(4, 2), 0.3).shape
        torch.Size([4, 2])
    """

    @register_to_config
    def __init__(self, dim: int, blocks: Sequence[dict], step_sizes: Sequence[float]) -> None:
        super().__init__()
        dim = _positive("dim", dim, integer=True)
        if isinstance(blocks, (str, dict)) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"blocks must be a non-empty list of block descriptions, got {blocks!r}")
        if isinstance(step_sizes, (str, bytes)) or len(step_sizes) != len(blocks):
            raise ValueError(f"step_sizes must hold one entry per block ({len(blocks)}), got {step_sizes!r}")
        self._steps = tuple(_positive(f"step_sizes[{i}]", h) for i, h in enumerate(step_sizes))
        self._bounds = _boundaries(self._steps)
        try:
            blocks = json.loads(json.dumps(list(blocks)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"blocks must be JSON-serialisable descriptions: {e}") from e
        self.flows = nn.ModuleList(_build_block(spec, dim) for spec in blocks)
        self.register_to_config(dim=dim, blocks=blocks, step_sizes=list(self._steps))

    # -- the time axis ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Data dimension."""
        return self.config.dim

    @property
    def num_blocks(self) -> int:
        """Number of blocks N."""
        return len(self.flows)

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """``(h_1, ..., h_N)``, data side first."""
        return self._steps

    @property
    def boundaries(self) -> tuple[float, ...]:
        """``(T_0 = 0, ..., T_N)``."""
        return self._bounds

    @property
    def block_types(self) -> tuple[str, ...]:
        """``"ode"`` or ``"map"`` per block, data side first (as in ``JKOScheduler``)."""
        return tuple("ode" if isinstance(b, JKOBlock) else "map" for b in reversed(self.flows))

    def block_index(self, timestep: float | Tensor) -> int:
        """The block k (1 = data side) with ``T_{k-1} < t <= T_k``; ``t = 0`` gives 1.

        Times should be float64 (as ``JKOScheduler.timesteps`` are): a float32 time can round
        across a boundary.

        Raises:
            ValueError: ``t`` outside ``[0, T_N]`` or not a single number.
        """
        t = _scalar_time(timestep)
        total = self._bounds[-1]
        slack = 1e-6 * max(1.0, total)  # float32 rounding; boundary stages need float64 times
        if not (-slack <= t <= total + slack):
            raise ValueError(f"timestep must lie in [0, {total}] (the model's time axis), got {t}")
        k = next((k for k in range(1, self.num_blocks + 1) if t <= self._bounds[k]), self.num_blocks)
        return k

    # -- evaluation ------------------------------------------------------------------------
    def forward(self, sample: Tensor, timestep: float | Tensor) -> Tensor:
        """Velocity ``dx/dt`` at flow time ``timestep``; ``sample`` and result of shape ``(batch, dim)``.

        Raises:
            ValueError: A bad ``sample`` or ``timestep``, or a ``JKOStep`` block asked away from its ``T_k``.
        """
        check_batch(sample, self.dim, "sample")
        k = self.block_index(timestep)
        t, t0, h = _scalar_time(timestep), self._bounds[k - 1], self._steps[k - 1]
        block = self.flows[self.num_blocks - k]
        if isinstance(block, JKOBlock):
            s = min(max((t - t0) / h, 0.0), 1.0)
            return block.velocity(sample, s) / h
        if abs(t - self._bounds[k]) > BOUNDARY_EPS * h:
            raise ValueError(
                f"block {k} is a discrete JKOStep: its velocity is defined at t = {self._bounds[k]} only "
                f"(one jump, as JKOScheduler steps it), got t = {t}"
            )
        x, _ = block(sample)
        return (sample - x) / h

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` (exact divergence, the blocks' own solvers), shape ``(batch,)``; no grad."""
        check_batch(x, self.dim)
        log_det = x.new_zeros(x.shape[0])
        for block in reversed(self.flows):
            x, ld = block.inverse(x)
            log_det = log_det + ld
        return _standard_normal_log_prob(x) + log_det

    # -- normflows interop ---------------------------------------------------------------------
    @classmethod
    def from_normflows(
        cls, flow: nf.NormalizingFlow, *, step_sizes: Sequence[float] | None = None
    ) -> JKOFlowModel:
        """Wrap the blocks of ``flow`` (shared modules: same tensors, no copies).

        Args:
            flow: An ``nf.NormalizingFlow`` of ``JKOBlock``/``JKOStep`` layers with a standard
                normal base ``DiagGaussian``.
            step_sizes: ``[h_1, ..., h_N]`` (data side first). Default: each block's
                ``interval`` length; required when a block has no ``interval`` (``JKOStep``).

        Raises:
            ValueError: Another base distribution or layer type, a layer that cannot be
                described, or missing step sizes.
        """
        q0 = flow.q0
        if (
            not isinstance(q0, nf.distributions.DiagGaussian)
            or bool(q0.loc.abs().max() > 0)
            or bool(q0.log_scale.abs().max() > 0)
        ):
            raise ValueError(f"flow.q0 must be a standard normal DiagGaussian (the JKO target), got {q0!r}")
        blocks = list(flow.flows)
        specs = [_describe_block(b) for b in blocks]
        if step_sizes is None:
            steps = []
            for k, block in enumerate(reversed(blocks), start=1):
                interval = getattr(block, "interval", None)
                if interval is None:
                    raise ValueError(f"block {k} ({type(block).__name__}) has no interval: pass step_sizes")
                steps.append(float(interval[1]) - float(interval[0]))
            step_sizes = steps
        with torch.random.fork_rng(devices=[]):  # building the fresh blocks must not move the RNG
            model = cls(dim=int(q0.d), blocks=specs, step_sizes=list(step_sizes))
        for k, (built, block) in enumerate(zip(model.flows, blocks)):
            ours = {n: tuple(t.shape) for n, t in built.state_dict().items()}
            theirs = {n: tuple(t.shape) for n, t in block.state_dict().items()}
            if ours != theirs:
                raise ValueError(f"flows[{k}] cannot be rebuilt from its description (state_dict differs)")
        model.flows = nn.ModuleList(blocks)
        return model

    def to_normflows(self) -> nf.NormalizingFlow:
        """An ``nf.NormalizingFlow`` over the same modules, base ``DiagGaussian(dim, trainable=False)``."""
        p = next(self.parameters())
        q0 = nf.distributions.DiagGaussian(self.dim, trainable=False).to(device=p.device, dtype=p.dtype)
        return nf.NormalizingFlow(q0=q0, flows=list(self.flows))

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> JKOFlowModel:
        """Load a model saved with ``save_pretrained`` (``config.json`` + safetensors; never a pickle).

        The checkpoint's float dtype is kept unless ``torch_dtype`` is given.

        Raises:
            FileNotFoundError: The folder lacks ``config.json`` or the safetensors weights.
            OSError: An unreadable (corrupt) weights file, named in the message.
            ValueError: A config that does not describe a valid model, or weights that do not
                match it (missing, unexpected or mis-shaped tensors), naming the file.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("JKOFlowModel loads safetensors only (use_safetensors=False would unpickle)")
        kwargs["use_safetensors"] = True
        kwargs.setdefault("low_cpu_mem_usage", False)  # small models: build in full, then load
        want_info = kwargs.pop("output_loading_info", False)
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        weights = folder / SAFETENSORS_WEIGHTS_NAME
        if folder.is_dir():
            for f in (folder / CONFIG_NAME, weights):
                if not f.is_file():
                    raise FileNotFoundError(
                        f"missing file {f} (expected a JKOFlowModel.save_pretrained folder)"
                    )
            if kwargs.get("torch_dtype") is None and kwargs.get("dtype") is None:
                kwargs["torch_dtype"] = _checkpoint_dtype(weights)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, output_loading_info=True, **kwargs
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"invalid JKOFlowModel in {folder / CONFIG_NAME}: {e}") from e
        bad = {k: v for k, v in info.items() if v}
        if bad:
            raise ValueError(f"weights in {weights} do not match the model config: {bad}")
        return (model, info) if want_info else model


def _checkpoint_dtype(path: Path) -> torch.dtype:
    """The floating dtype of the tensors in a safetensors file (float32 if it holds none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                dtype = f.get_slice(key).get_dtype()
                if dtype.startswith(("F", "BF")):
                    return {
                        "F64": torch.float64,
                        "F32": torch.float32,
                        "F16": torch.float16,
                        "BF16": torch.bfloat16,
                    }.get(dtype, torch.float32)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise OSError(f"cannot read weights file {path}: {e}") from e
    return torch.float32


def _scalar_time(timestep: float | Tensor) -> float:
    if isinstance(timestep, Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single time, got shape {tuple(timestep.shape)}")
        return float(timestep.reshape(()))
    if isinstance(timestep, bool) or not isinstance(timestep, (int, float)):
        raise ValueError(f"timestep must be a number or a one-element tensor, got {timestep!r}")
    return float(timestep)
