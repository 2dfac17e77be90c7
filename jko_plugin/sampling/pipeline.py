r"""Sampling a JKO flow (or any velocity model) the diffusers way: ``JKOFlowPipeline``."""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import normflows as nf
import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .._validate import choice, positive_int
from ..schedule import StepSchedule
from ..steps.block import JKOBlock
from ..steps.context import check_flow_context
from .flowmap import FlowMapModel
from .flowmap_scheduler import FlowMapScheduler
from .model import JKOFlowModel
from .scheduler import JKOScheduler

__all__ = ["OUTPUT_TYPES", "JKOFlowPipeline", "JKOFlowPipelineOutput"]

OUTPUT_TYPES = ("pt", "np")


@dataclass
class JKOFlowPipelineOutput(BaseOutput):
    """Output of ``JKOFlowPipeline.__call__``.

    Args:
        samples: Generated points, shape ``(batch, dim)``: a tensor (``"pt"``) or an array (``"np"``).
    """

    samples: Tensor | np.ndarray


def _warn_other_map(scheduler: JKOScheduler, blocks: Sequence[JKOBlock]) -> None:
    """Warn when ``scheduler`` would integrate ``blocks`` with another solver or step count than
    their own: its samples would come from another map than the one ``flow.forward`` draws from."""
    own = {(b.solver, b.steps) for b in blocks}
    wanted = (scheduler.config.solver, scheduler.steps_per_block)
    if len(own) == 1 and wanted not in own:
        solver, steps = own.pop()
        warnings.warn(
            f"the scheduler samples with {wanted[1]} {wanted[0]} steps per block, the JKOBlocks "
            f"integrate with {steps} {solver} steps: its samples come from another map than the "
            f"flow's (JKOScheduler(..., steps_per_block={steps}), or pass scheduler.schedule)",
            stacklevel=3,
        )


def _check_components(model: torch.nn.Module, scheduler: object) -> None:
    """A ``JKOFlowModel`` needs a ``JKOScheduler`` on its time axis; the model then adopts the
    scheduler's (float64) axis, so that stages next to a boundary reach the right step. A
    ``FlowMapModel`` needs a ``FlowMapScheduler`` on its time axis ``[0, total_time]``."""
    if isinstance(model, FlowMapModel):
        if not isinstance(scheduler, FlowMapScheduler):
            raise ValueError(f"a FlowMapModel needs a FlowMapScheduler, got {type(scheduler).__name__}")
        if abs(scheduler.total_time - model.total_time) > 1e-9 * model.total_time:
            raise ValueError(f"scheduler has total_time={scheduler.total_time}, the model {model.total_time}")
        return
    if not isinstance(model, JKOFlowModel):
        return
    if not isinstance(scheduler, JKOScheduler):
        raise ValueError(
            "a JKOFlowModel lives on the JKO time axis and needs a JKOScheduler, "
            f"got {type(scheduler).__name__}"
        )
    if scheduler.num_blocks != model.num_blocks:
        raise ValueError(f"scheduler has num_blocks={scheduler.num_blocks}, the model {model.num_blocks}")
    if scheduler.block_types != model.block_types:
        raise ValueError(f"scheduler block_types {scheduler.block_types} != model's {model.block_types}")
    if scheduler.layer_boundaries != model.layer_boundaries:
        raise ValueError(
            f"scheduler layer_boundaries {scheduler.layer_boundaries} != model's {model.layer_boundaries}"
        )
    try:
        model.adopt_schedule(scheduler.schedule)
    except ValueError as err:
        raise ValueError(f"the scheduler's time axis does not match the model's: scheduler {err}") from err


class JKOFlowPipeline(DiffusionPipeline):
    r"""Samples a velocity model with a scheduler: a JKO flow (``JKOFlowModel`` + ``JKOScheduler``) or a
    flow-matching model (``(sample, timestep) -> velocity`` + e.g. ``FlowMatchEulerDiscreteScheduler``).

    The loop is diffusers' usual one: latents ``z ~ N(0, I)`` of shape ``(batch, dim)``, then for each
    ``t`` in ``scheduler.timesteps``: ``v = model(x, t)``, ``x = scheduler.step(v, t, x).prev_sample``.
    For a JKO flow this integrates from ``T_N`` (noise) down to 0 (data) and, with the blocks' own
    solver and steps (as ``from_normflows`` sets up), returns ``flow.forward(z)`` up to rounding.

    Conditional models sample the diffusers way: ``pipe(class_labels=[3, 3, 7])`` (one sample per
    label, or ``class_labels=3, batch_size=n``) calls ``model(x, t, class_labels=...)``, and
    ``pipe(context=c)`` with ``c`` of shape ``(batch, context_dim)`` calls
    ``model(x, t, encoder_hidden_states=c)``; ``JKOFlowModel`` and ``FlowMatchingModel`` take both.

    Args:
        model: A ``JKOFlowModel``, or any diffusers ``ModelMixin`` whose ``forward(sample, timestep)``
            returns the velocity (a tensor, or an output with ``.sample``); without a ``config.dim``
            (the data dimension), pass ``latents``.
        scheduler: A ``JKOScheduler`` (required for a ``JKOFlowModel``, whose blocks, block types and
            boundaries it must match), a ``FlowMapScheduler`` (required for a ``FlowMapModel``:
            ``num_inference_steps`` jumps of the map) or any diffusers ODE scheduler such as
            ``FlowMatchEulerDiscreteScheduler`` (time runs noise -> data as sigma 1 -> 0).

    Raises:
        ValueError: A ``JKOFlowModel`` with another scheduler class or a mismatched ``JKOScheduler``.

    Example:
        >>> import normflows as nf
        >>> flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False),
        ...                           [JKOBlock(2, interval=(0.25, 0.6)), JKOBlock(2, interval=(0.0, 0.25))])
        >>> pipe = JKOFlowPipeline.from_normflows(flow)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> pipe(batch_size=3, generator=torch.Generator().manual_seed(0)).samples.shape
        torch.Size([3, 2])
    """

    model_cpu_offload_seq = "model"

    def __init__(self, model: torch.nn.Module, scheduler: Any) -> None:
        super().__init__()
        _check_components(model, scheduler)
        self.register_modules(model=model, scheduler=scheduler)

    @classmethod
    def from_normflows(
        cls,
        flow: nf.NormalizingFlow,
        *,
        scheduler: JKOScheduler | StepSchedule | Sequence[float] | None = None,
        solver: str | None = None,
        steps_per_block: int | None = None,
    ) -> JKOFlowPipeline:
        """A pipeline over the layers of ``flow`` (shared, not copied).

        Args:
            flow: An ``nf.NormalizingFlow`` of JKO steps (and describable normflows layers),
                standard normal base.
            scheduler: The ``JKOScheduler`` the flow was trained on (its time axis becomes the
                model's; its block types and layer events are set to the flow's), or just the time
                axis (a ``StepSchedule`` or step sizes), or ``None``: the steps' own intervals.
            solver, steps_per_block: Of a new ``JKOScheduler`` (not with a ``JKOScheduler``);
                default: the ``JKOBlock``s' common ``solver`` and ``steps``, so that sampling
                reproduces ``flow.forward``.

        Raises:
            ValueError: A ``JKOScheduler`` with ``solver`` or ``steps_per_block``, blocks that
                disagree on solver or steps while the option is not given, or any error of
                ``JKOFlowModel.from_normflows``.
        """
        given = scheduler if isinstance(scheduler, JKOScheduler) else None
        if given is not None and (solver is not None or steps_per_block is not None):
            raise ValueError("a JKOScheduler is exclusive with solver and steps_per_block")
        model = JKOFlowModel.from_normflows(flow, schedule=scheduler)
        types = None if set(model.block_types) == {"ode"} else list(model.block_types)
        events = list(model.layer_boundaries) or None
        odes = [s for s in model.steps if isinstance(s, JKOBlock)]
        if given is not None:
            _warn_other_map(given, odes)
            scheduler = given
            if (
                scheduler.block_types != model.block_types
                or scheduler.layer_boundaries != model.layer_boundaries
            ):
                # The trainer needs only step sizes; sampling needs the flow's step types and layers.
                scheduler = type(scheduler).from_config(
                    scheduler.config, block_types=types, layer_boundaries=events
                )
            return cls(model=model, scheduler=scheduler)
        for name, value in (("solver", solver), ("steps_per_block", steps_per_block)):
            attr = "solver" if name == "solver" else "steps"
            found = {getattr(b, attr) for b in odes}
            if value is None and len(found) > 1:
                raise ValueError(f"the JKOBlocks use different {attr} values {sorted(found)}: pass {name}")
        scheduler = JKOScheduler.from_schedule(
            model.schedule,
            solver=solver or (odes[0].solver if odes else "rk4"),
            steps_per_block=steps_per_block or (odes[0].steps if odes else 1),
            block_types=types,
            layer_boundaries=events,
        )
        return cls(model=model, scheduler=scheduler)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> JKOFlowPipeline:
        """Load a pipeline saved with ``save_pretrained``; works offline (``HF_HUB_OFFLINE=1``).

        Raises:
            FileNotFoundError: A local folder without ``model_index.json`` or a component's folder.
            ValueError, OSError: From the components' loaders, naming the bad file.
        """
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            index = folder / cls.config_name
            if not index.is_file():
                raise FileNotFoundError(
                    f"missing file {index} (expected a JKOFlowPipeline.save_pretrained folder)"
                )
            try:
                components = json.loads(index.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{index} is not valid JSON: {e}") from e
            for name in ("model", "scheduler"):
                if not (folder / name).is_dir():
                    raise FileNotFoundError(f"missing folder {folder / name} listed in {index}")
                if name not in components:
                    raise ValueError(f"{index} does not list the component {name!r}")
        kwargs.setdefault("low_cpu_mem_usage", False)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def _velocity(self, sample: Tensor, t: Tensor, condition: dict | None = None) -> Tensor:
        out = self.model(sample, t, **(condition or {}))
        if isinstance(out, tuple):
            out = out[0]
        return out.sample if hasattr(out, "sample") else out

    def _dim(self) -> int:
        dim = getattr(getattr(self.model, "config", None), "dim", None)
        if dim is None:
            raise ValueError("the model has no config.dim: pass latents of shape (batch, dim)")
        return int(dim)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        class_labels: int | Sequence[int] | Tensor | None = None,
        context: Tensor | None = None,
    ) -> JKOFlowPipelineOutput | tuple:
        """Draw samples.

        Args:
            batch_size: Number of samples (default 1, ``latents.shape[0]``, or one per label or
                context row).
            num_inference_steps: Solver steps (a ``FlowMapScheduler``'s jumps). ``None``: the
                ``JKOScheduler``'s or ``FlowMapScheduler``'s default grid (required for others).
            generator: Makes the latents reproducible.
            latents: Latents ``z`` of shape ``(batch, dim)`` to start from (moved to the model's
                device and dtype) instead of drawing them.
            output_type: ``"pt"`` (tensor, default) or ``"np"`` (numpy array).
            return_dict: Return ``JKOFlowPipelineOutput`` (default) or the tuple ``(samples,)``.
            class_labels: For a class-conditional model: one label per sample (a list or an
                integer tensor), or one label for all ``batch_size`` samples (an int).
            context: For a model with a continuous context: ``(batch, context_dim)``.

        Returns:
            ``JKOFlowPipelineOutput`` with ``samples`` of shape ``(batch, dim)``.

        Raises:
            ValueError: An unknown ``output_type``, latents of the wrong shape or count, a
                missing ``num_inference_steps`` for a non-JKO scheduler, or a context that is
                missing for a conditional model, not taken by the model, or of the wrong count.
        """
        choice("output_type", output_type, OUTPUT_TYPES)
        batch_size, condition = self._condition(batch_size, class_labels, context, latents)
        if num_inference_steps is None and not isinstance(self.scheduler, (JKOScheduler, FlowMapScheduler)):
            raise ValueError(f"num_inference_steps is required with {type(self.scheduler).__name__}")
        device, dtype = self._execution_device, self.model.dtype
        if latents is None:
            n = 1 if batch_size is None else positive_int("batch_size", batch_size)
            x = randn_tensor((n, self._dim()), generator=generator, device=device, dtype=dtype)
            # Flow-matching schedulers define no init_noise_sigma: their noise end is unit noise.
            x = x * getattr(self.scheduler, "init_noise_sigma", 1.0)
        else:
            if latents.dim() != 2 or (
                hasattr(getattr(self.model, "config", None), "dim") and latents.shape[1] != self._dim()
            ):
                raise ValueError(f"latents must have shape (batch, dim), got {tuple(latents.shape)}")
            if batch_size is not None and batch_size != latents.shape[0]:
                raise ValueError(f"batch_size={batch_size} but latents hold {latents.shape[0]} samples")
            x = latents.to(device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        # Deterministic ODE schedulers may not take a generator (diffusers' Heun does not).
        extra = (
            {"generator": generator}
            if "generator" in inspect.signature(self.scheduler.step).parameters
            else {}
        )
        scale = getattr(self.scheduler, "scale_model_input", None)  # flow-matching schedulers have none
        if condition:
            condition = {k: v.to(device) for k, v in condition.items()}
        for t in self.progress_bar(self.scheduler.timesteps):
            v = self._velocity(x if scale is None else scale(x, t), t, condition)
            x = self.scheduler.step(v, t, x, **extra).prev_sample
        self.maybe_free_model_hooks()
        samples = x.cpu().numpy() if output_type == "np" else x
        if not return_dict:
            return (samples,)
        return JKOFlowPipelineOutput(samples=samples)

    def _condition(
        self, batch_size: int | None, class_labels: object, context: object, latents: Tensor | None
    ) -> tuple[int | None, dict]:
        """``batch_size`` and the model keywords (``class_labels`` / ``encoder_hidden_states``)."""
        if class_labels is not None and context is not None:
            raise ValueError("give class_labels or context, not both")
        if class_labels is None and context is None:
            kind = self.model.conditioning if isinstance(self.model, JKOFlowModel) else {}
            if kind:
                what = "class_labels" if "num_classes" in kind else "context"
                raise ValueError(f"this model is conditional ({kind}): pass {what}")
            return batch_size, {}
        if class_labels is not None:
            if isinstance(class_labels, int) and not isinstance(class_labels, bool):
                n = 1 if batch_size is None else positive_int("batch_size", batch_size)
                n = n if latents is None else latents.shape[0]
                class_labels = [class_labels] * n
            labels = torch.as_tensor(class_labels)
            if labels.dim() != 1:
                raise ValueError(
                    f"class_labels must be an int or one label per sample, got shape {tuple(labels.shape)}"
                )
            key, value = "class_labels", labels
        else:
            if not isinstance(context, Tensor) or context.dim() != 2:
                got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"context must be a tensor of shape (batch, context_dim), got {got}")
            key, value = "encoder_hidden_states", context.to(self.model.dtype)
        if batch_size is not None and batch_size != value.shape[0]:
            raise ValueError(
                f"batch_size={batch_size} but {value.shape[0]} {key.replace('_', ' ')} rows were given"
            )
        if isinstance(self.model, JKOFlowModel):  # check labels and shapes once, before sampling
            self.model.context_from(**{key: value})
            flow_steps = self.model.steps
            check_flow_context(flow_steps, value, value.shape[0], name=key)
        return value.shape[0], {key: value}

    def log_prob(
        self, x: Tensor, class_labels: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        """Exact log-density ``log p(x)`` of the JKO flow, shape ``(batch,)`` (see ``JKOFlowModel.log_prob``);
        ``log p(x | c)`` with ``class_labels`` or ``context`` for a conditional model.

        Raises:
            TypeError: The model is not a ``JKOFlowModel`` (a generic velocity model has no likelihood here).
        """
        if not isinstance(self.model, JKOFlowModel):
            raise TypeError(f"log_prob needs a JKOFlowModel, got {type(self.model).__name__}")
        p = next(self.model.parameters())
        given = self.model.context_from(class_labels, None if context is None else context.to(p.dtype))
        return self.model.log_prob(x.to(device=p.device, dtype=p.dtype), context=given)
