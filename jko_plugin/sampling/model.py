r"""A trained JKO flow as a diffusers model: its steps' velocity fields on the flow's time axis."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import normflows as nf
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, BaseOutput
from normflows.flows import Flow
from torch import Tensor, nn

from .._ops import standard_normal_log_prob
from .._validate import check_batch, check_timestep, choice, positive_int
from ..schedule import FLOAT32_RTOL, OnStepSchedule, StepSchedule
from ..steps.base import ProximalStep
from ..steps.block import JKOBlock
from ..steps.context import flow_context
from ..steps.layers import build_layer, describe_layer
from ..steps.map import JKOStep
from ._grid import BOUNDARY_EPS

__all__ = ["JKOFlowModel", "VelocityOutput"]

#: The classes that rebuild a saved JKO step, by its ``block_type``.
_STEP_CLASSES: dict[str, type[ProximalStep]] = {"ode": JKOBlock, "map": JKOStep}
_SPEC_TYPES = (*_STEP_CLASSES, "layer")


@dataclass
class VelocityOutput(BaseOutput):
    """What a velocity model's ``forward`` returns (diffusers' convention; a tuple with
    ``return_dict=False``).

    Attributes:
        sample: The velocity ``dx/dt``, shape ``(batch, dim)``.
    """

    sample: Tensor


def _describe(layer: Flow) -> dict:
    """The saved description of one layer of the flow: a JKO step or a normflows layer."""
    if isinstance(layer, ProximalStep):
        return {"type": layer.block_type, "kwargs": layer.config()}
    try:
        return {"type": "layer", **describe_layer(layer)}
    except ValueError as err:
        raise ValueError(f"cannot save this flow: {err} (or a JKO step)") from err


def _build(spec: dict, dim: int) -> Flow:
    if not isinstance(spec, dict):
        raise ValueError(f"a layer description must be a dict, got {spec!r}")
    kind = choice("layer type", spec.get("type"), _SPEC_TYPES)
    if kind == "layer":
        return build_layer(spec)
    # Files written before the step contract held a map step's fields at the top level.
    config = spec["kwargs"] if "kwargs" in spec else {k: v for k, v in spec.items() if k != "type"}
    step = _STEP_CLASSES[kind].from_config(config)
    if step.dim != dim:
        raise ValueError(f"a JKO step has dim {step.dim}, the model has dim {dim}")
    return step


class JKOFlowModel(OnStepSchedule, ModelMixin, ConfigMixin):
    r"""A JKO flow's layers as one diffusers model: ``forward(sample, timestep)`` is the velocity ``dx/dt``.

    JKO step k (k = 1 is the data side) lives on ``[T_{k-1}, T_k]`` of the model's time axis (its
    ``schedule``, a ``StepSchedule``); normflows layers between steps (``ActNorm``, permutations)
    take no time and sit on a boundary ``T_j`` as a layer event (``layer_boundaries``). ``flows``
    keeps normflows' order (``flows[0]`` next to the latent), so ``to_normflows()`` rebuilds the
    same ``nf.NormalizingFlow``.

    ``forward(x, t)`` asks the step with ``T_{k-1} < t <= T_k`` (``t = 0``: step 1) for its
    ``velocity_at(x, t)``: an ODE block's velocity, a map step's secant velocity at ``T_k`` (see
    ``JKOScheduler``). At exactly a boundary ``T_j`` with a layer event it returns the displacement
    ``x - L(x)`` of the layers ``L`` there, which the scheduler applies as a jump of -1.

    A conditional flow (its steps built with ``num_classes`` or ``context_dim``, saved in their
    configs) takes its context as diffusers' conditional models do: ``forward(x, t,
    class_labels=...)`` for labels (as a class-conditional DiT or UNet), ``forward(x, t,
    encoder_hidden_states=...)`` for a continuous context ``(batch, context_dim)``; normflows
    layers between steps are unconditional.

    Args:
        dim: Data dimension.
        blocks: One description per layer in normflows order: ``{"type": "ode" | "map", "kwargs":
            step.config()}`` for a JKO step, ``{"type": "layer", "class": ..., "kwargs": ...}``
            (``describe_layer``) for a normflows layer.
        step_sizes: ``[h_1, ..., h_N]`` of the JKO steps, data side first (as in ``JKOScheduler``).

    Raises:
        ValueError: ``len(step_sizes)`` different from the number of JKO steps, a step size <= 0,
            an unknown layer type, or a layer whose dimension is not ``dim``.

    Example:
        >>> import normflows as nf
        >>> flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False),
        ...                           [JKOBlock(2, interval=(0.25, 0.6)), JKOBlock(2, interval=(0.0, 0.25))])
        >>> model = JKOFlowModel.from_normflows(flow)
        >>> model(torch.randn(4, 2), 0.3).sample.shape
        torch.Size([4, 2])
    """

    @register_to_config
    def __init__(self, dim: int, blocks: Sequence[dict], step_sizes: Sequence[float]) -> None:
        super().__init__()
        dim = positive_int("dim", dim)
        if isinstance(blocks, (str, dict)) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"blocks must be a non-empty list of layer descriptions, got {blocks!r}")
        try:
            blocks = json.loads(json.dumps(list(blocks)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"blocks must be JSON-serialisable descriptions: {e}") from e
        self.flows = nn.ModuleList(_build(spec, dim) for spec in blocks)
        steps = self.steps
        if isinstance(step_sizes, (str, bytes)) or len(step_sizes) != len(steps):
            raise ValueError(
                f"step_sizes must hold one entry per JKO step ({len(steps)}), got {step_sizes!r}"
            )
        self._schedule = StepSchedule(tuple(step_sizes))
        self._schedule.place(steps)
        self.register_to_config(dim=dim, blocks=blocks, step_sizes=list(self._schedule.step_sizes))

    # -- the time axis ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Data dimension."""
        return self.config.dim

    @property
    def steps(self) -> list[ProximalStep]:
        """The JKO steps, data side first (step k is ``steps[k - 1]``)."""
        return [f for f in reversed(self.flows) if isinstance(f, ProximalStep)]

    @property
    def block_types(self) -> tuple[str, ...]:
        """``"ode"`` or ``"map"`` per JKO step, data side first (as in ``JKOScheduler``)."""
        return tuple(s.block_type for s in self.steps)

    @property
    def layer_boundaries(self) -> tuple[int, ...]:
        """Indices ``j`` of the boundaries ``T_j`` that carry normflows layers (as in ``JKOScheduler``)."""
        return tuple(sorted(self._layers_at()))

    def _layers_at(self) -> dict[int, list[Flow]]:
        """Boundary index -> its normflows layers in normflows (latent -> data) order."""
        out: dict[int, list[Flow]] = {}
        j = 0
        for layer in reversed(self.flows):  # data side first
            if isinstance(layer, ProximalStep):
                j += 1
            else:
                out.setdefault(j, []).insert(0, layer)
        return out

    def adopt_schedule(self, schedule: StepSchedule) -> None:
        """Take ``schedule`` (e.g. the scheduler's float64 one) as the time axis: it must agree with
        the current one to float32 precision; map steps are re-placed on it.

        Raises:
            ValueError: The two time axes disagree.
        """
        schedule = StepSchedule.coerce(schedule)
        if not schedule.agrees_with(self._schedule):
            raise ValueError(f"boundaries {schedule.boundaries} != the model's {self._schedule.boundaries}")
        self._schedule = schedule
        for step, (t0, t1) in zip(self.steps, schedule.intervals):
            if isinstance(step, JKOStep):
                step.set_interval(t0, t1)
        self.register_to_config(step_sizes=list(schedule.step_sizes))

    # -- context ---------------------------------------------------------------------------
    @property
    def conditioning(self) -> dict:
        """What the steps are conditioned on: ``{}``, ``{"num_classes": n}`` or ``{"context_dim": k}``."""
        return flow_context(self.steps)

    def context_from(self, class_labels: object = None, encoder_hidden_states: object = None) -> object:
        """The one context a call carries: ``class_labels`` for a label-conditional model,
        ``encoder_hidden_states`` for a continuous context (checked by the steps).

        Raises:
            ValueError: The keyword that does not fit this model, or both.
        """
        kind = self.conditioning
        if class_labels is not None and "num_classes" not in kind:
            what = "a continuous context: pass encoder_hidden_states" if kind else "no context"
            raise ValueError(f"class_labels given, but this model takes {what}")
        if encoder_hidden_states is not None and "context_dim" not in kind:
            what = "class labels: pass class_labels" if kind else "no context"
            raise ValueError(f"encoder_hidden_states given, but this model takes {what}")
        return class_labels if "num_classes" in kind else encoder_hidden_states

    # -- evaluation ------------------------------------------------------------------------
    def forward(
        self,
        sample: Tensor,
        timestep: float | Tensor,
        class_labels: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        return_dict: bool = True,
    ) -> VelocityOutput | tuple[Tensor]:
        """Velocity ``dx/dt`` at flow time ``timestep``; ``sample`` and velocity of shape ``(batch, dim)``.

        Args:
            sample: Points ``(batch, dim)``.
            timestep: A flow time (number or one-element tensor), or one per row, shape ``(batch,)``
                (a pipeline passes all-equal rows). Rows at different times each get the velocity
                of the step (or layer event) at their own time.
            class_labels: ``(batch,)`` labels for a label-conditional model.
            encoder_hidden_states: ``(batch, context_dim)`` for a continuously conditioned model.
            return_dict: ``VelocityOutput`` (default) or the tuple ``(velocity,)``.

        Raises:
            ValueError: A bad ``sample`` or ``timestep``, a map step asked away from its ``T_k``, or
                a missing, unexpected or bad context.
        """
        check_batch(sample, self.dim, "sample")
        context = self.context_from(class_labels, encoder_hidden_states)
        t = check_timestep(timestep, sample.shape[0])
        if isinstance(t, float):
            v = self._velocity(sample, t, context)
        else:
            v = sample.new_empty(sample.shape)
            for value in torch.unique(t):
                rows = t == value
                part = context[rows] if isinstance(context, Tensor) else context
                v[rows] = self._velocity(sample[rows], float(value), part)
        return VelocityOutput(sample=v) if return_dict else (v,)

    def _velocity(self, sample: Tensor, t: float, context: object = None) -> Tensor:
        bounds = self._schedule.boundaries
        for j, layers in self._layers_at().items():
            if abs(t - bounds[j]) <= 0.1 * BOUNDARY_EPS * min(self._schedule.step_sizes):
                x = sample
                for layer in layers:
                    x, _ = layer(x)
                return sample - x
        k = self._schedule.block_at(t)
        return self.steps[k - 1].velocity_at(sample, t, context=context)

    @torch.no_grad()
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` (exact divergence, the steps' own solvers), shape ``(batch,)``; no grad.
        A conditional model gives ``log p(x | c)`` for the ``context`` (labels or tensor) of each row."""
        check_batch(x, self.dim)
        log_det = x.new_zeros(x.shape[0])
        for layer in reversed(self.flows):
            x, ld = layer.inverse(x, context=context) if isinstance(layer, ProximalStep) else layer.inverse(x)
            log_det = log_det + ld
        return standard_normal_log_prob(x) + log_det

    # -- normflows interop ---------------------------------------------------------------------
    @classmethod
    def from_normflows(cls, flow: nf.NormalizingFlow, *, schedule: object | None = None) -> JKOFlowModel:
        """Wrap the layers of ``flow`` (shared modules: same tensors, no copies).

        Args:
            flow: An ``nf.NormalizingFlow`` of JKO steps and describable normflows layers
                (``LAYER_TYPES``) with a standard normal base ``DiagGaussian``.
            schedule: The time axis (a ``StepSchedule``, ``JKOScheduler`` or step sizes). Default:
                the steps' intervals, as ``StepSchedule.place`` (or the trainer) set them. ODE
                blocks' intervals must agree with it to float32 precision; map steps are placed on it.

        Raises:
            ValueError: Another base distribution, a layer that cannot be described, steps that
                were never placed on one time axis, or blocks placed off ``schedule``.
        """
        q0 = flow.q0
        if (
            not isinstance(q0, nf.distributions.DiagGaussian)
            or bool(q0.loc.abs().max() > 0)
            or bool(q0.log_scale.abs().max() > 0)
        ):
            raise ValueError(f"flow.q0 must be a standard normal DiagGaussian (the JKO target), got {q0!r}")
        layers = list(flow.flows)
        specs = [_describe(layer) for layer in layers]
        steps = [f for f in reversed(layers) if isinstance(f, ProximalStep)]
        if not steps:
            raise ValueError("flow has no JKO step (JKOBlock or JKOStep)")
        found = StepSchedule.from_intervals([s.time_interval for s in steps]) if schedule is None else None
        sched = found if schedule is None else StepSchedule.coerce(schedule)
        if sched.num_blocks != len(steps):
            raise ValueError(
                f"schedule has {sched.num_blocks} step sizes but the flow has {len(steps)} JKO steps"
            )
        tol = FLOAT32_RTOL * max(1.0, sched.total_time)
        for k, (step, span) in enumerate(zip(steps, sched.intervals), start=1):
            if isinstance(step, JKOBlock) and any(abs(a - b) > tol for a, b in zip(step.time_interval, span)):
                raise ValueError(
                    f"block {k} is placed on {step.time_interval}, the schedule puts it on {span}: "
                    "place the blocks with StepSchedule.place"
                )
        with torch.random.fork_rng(devices=[]):  # building the fresh layers must not move the RNG
            model = cls(dim=int(q0.d), blocks=specs, step_sizes=list(sched.step_sizes))
        for k, (built, layer) in enumerate(zip(model.flows, layers)):
            ours = {n: tuple(t.shape) for n, t in built.state_dict().items()}
            theirs = {n: tuple(t.shape) for n, t in layer.state_dict().items()}
            if ours != theirs:
                raise ValueError(f"flows[{k}] cannot be rebuilt from its description (state_dict differs)")
        model.flows = nn.ModuleList(layers)
        for step, (t0, t1) in zip(steps, sched.intervals):
            if isinstance(step, JKOStep):
                step.set_interval(t0, t1)
        return model

    def to_normflows(self) -> nf.NormalizingFlow:
        """An ``nf.NormalizingFlow`` over the same modules, base ``DiagGaussian(dim, trainable=False)``
        (an ``nf.ConditionalNormalizingFlow`` for a conditional model)."""
        p = next(self.parameters())
        q0 = nf.distributions.DiagGaussian(self.dim, trainable=False).to(device=p.device, dtype=p.dtype)
        cls = nf.ConditionalNormalizingFlow if self.conditioning else nf.NormalizingFlow
        return cls(q0=q0, flows=list(self.flows))

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
        default_dtype = torch.get_default_dtype()
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, output_loading_info=True, **kwargs
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"invalid JKOFlowModel in {folder / CONFIG_NAME}: {e}") from e
        finally:
            # diffusers sets the default dtype to torch_dtype while it builds the model and leaves
            # it there when building fails.
            torch.set_default_dtype(default_dtype)
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
                if key.endswith(".interval"):  # JKOBlock keeps its time interval in float64
                    continue
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
