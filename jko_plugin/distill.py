r"""Flow map distillation: a ``FlowMapModel`` learned from a teacher's velocity field.

Boffi, Albergo and Vanden-Eijnden ("Flow map matching", arXiv:2406.07507, 2024) characterise the
two-time flow map ``X(x, s, t)`` of ``dx/dt = b(x, t)`` by two equations with ``X(x, s, s) = x``:

- Lagrangian: ``d/dt X(x, s, t) = b(X(x, s, t), t)``;
- Eulerian: ``d/ds X(x, s, t) + (grad_x X(x, s, t)) b(x, s) = 0``.

Map distillation minimises the mean square residual of one of them over ``x ~ rho_s`` (the
teacher's marginal at ``s``) and pairs ``(s, t)``. **We use the Eulerian loss (EMD) by default**
(``loss="lagrangian"``, LMD, is available), on measurements: distilling a flow-matching teacher
of two-moons for 40 s (each loss at its best learning rate, scored on validation samples), the
Eulerian student's 4-step samples landed 0.017 (RMS) from the teacher's 48-evaluation samples of
the same latents, the Lagrangian one's 0.054 (W2 to data 1.04x against 1.17x the teacher's). The
reason we see: the Eulerian residual asks the teacher at the pool state ``x``, a fixed target
computed without gradient, while the Lagrangian residual asks it at the student's own output
``X(x, s, t)``, so a wrong ``X`` gets a wrong target and each step also back-propagates through
the teacher. With ``X = x + (t - s) u`` either residual is one forward-mode tangent of the
student: ``d/ds X + (grad_x X) b`` is its derivative along ``(b(x, s), 1, 0)``.

Training states ``x ~ rho_s`` come from the teacher itself: a pool of its trajectories from
``N(0, I)`` at ``T`` (RK4 with fine steps, stored on a grid that includes the teacher's piece
boundaries), and for a time ``s`` between grid points one more RK4 step from the grid point above.
Times: ``s ~ U[0, T]`` and ``t ~ U[0, s]`` (jumps towards the data, the sampler's direction). So
the distilled map needs nothing but the teacher: no data, no interpolant, no samples of its own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ._validate import choice, positive_int
from .adapters.budget import FitHistory, TrainingBudget, fit_budgeted
from .sampling.field import VelocityField
from .sampling.flowmap import FlowMapModel

__all__ = [
    "DISTILL_LOSSES",
    "TeacherPool",
    "distill_flow_map",
    "load_teacher",
    "save_flow_map",
    "teacher_gap",
]

#: The map-distillation losses; the first is the default.
DISTILL_LOSSES = ("eulerian", "lagrangian")


class TeacherPool:
    """States of a teacher's trajectories, and fresh draws ``x ~ rho_s`` at any ``s`` from them.

    Args:
        field: The teacher.
        size: Trajectories (latents ``N(0, I)`` at ``T`` from ``generator``).
        intervals: Equal grid intervals over ``[0, T]`` (piece boundaries are added).
        solver_steps: RK4 steps over ``[0, T]`` when integrating the teacher.
    """

    def __init__(
        self,
        field: VelocityField,
        size: int,
        *,
        intervals: int = 32,
        solver_steps: int = 64,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.field = field
        self.times = field.grid(intervals)  # decreasing from T to 0
        z = torch.randn(
            positive_int("pool_size", size), field.dim, generator=generator, dtype=dtype, device=device
        )
        self.states = field.trajectory(z, self.times, steps=solver_steps)  # (len(times), size, d)
        self._lower = torch.tensor(
            self.times[1:], dtype=dtype, device=device
        )  # interval j: (lower_j, times_j]
        self._upper = torch.tensor(self.times[:-1], dtype=dtype, device=device)
        # The piece of each grid interval (grids include the piece boundaries).
        mid = 0.5 * (self._lower + self._upper)
        self._piece = field.piece_index(mid.double()).to(device)

    @torch.no_grad()
    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(x, s)``: ``n`` states at times ``s ~ U[0, T]`` (one RK4 step from the grid time above)."""
        T, dev, dt_ = self.field.total_time, self.states.device, self.states.dtype
        s = torch.rand(n, generator=generator, dtype=dt_, device=dev) * T
        # Interval j of the decreasing grid holds lower_j < s <= upper_j.
        m = len(self._upper)
        j = m - 1 - torch.bucketize(s, self._upper.flip(0), right=False).clamp(0, m - 1)
        rows = torch.randint(0, self.states.shape[1], (n,), generator=generator, device=dev)
        x, t0 = self.states[j, rows], self._upper[j]
        h = (s - t0)[:, None]  # <= 0: from the grid point down to s
        piece = self._piece[j]

        def v(y: Tensor, t: Tensor) -> Tensor:
            return self.field(y, t, piece=piece)

        k1 = v(x, t0)
        k2 = v(x + 0.5 * h * k1, t0 + 0.5 * h[:, 0])
        k3 = v(x + 0.5 * h * k2, t0 + 0.5 * h[:, 0])
        k4 = v(x + h * k3, s)
        return x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6, s


def _residual(
    model: FlowMapModel, field: VelocityField, loss: str, x: Tensor, s: Tensor, t: Tensor
) -> Tensor:
    zeros, ones = torch.zeros_like(s), torch.ones_like(s)
    if loss == "lagrangian":
        X, dX_dt = model.flow_map_jvp(x, s, t, torch.zeros_like(x), zeros, ones)
        return dX_dt - field(X, t)
    with torch.no_grad():
        b = field(x, s)
    _, transport = model.flow_map_jvp(x, s, t, b, ones, zeros)
    return transport


def distill_flow_map(
    teacher: object,
    model: FlowMapModel | None = None,
    *,
    steps: int | None = None,
    budget_seconds: float | None = None,
    loss: str = "eulerian",
    batch_size: int = 512,
    lr: float = 1e-2,
    hidden: Sequence[int] = (64, 64, 64),
    pool_size: int = 8192,
    seed: int = 0,
    log_every: int = 100,
) -> tuple[FlowMapModel, FitHistory]:
    """Learn the flow map of ``teacher`` by map distillation (see the module docstring).

    Args:
        teacher: A ``VelocityField`` or what ``VelocityField.from_model`` takes: a flow-matching
            model, a ``JKOFlowModel`` or normflows flow of ODE blocks, ... (its per-row-time
            velocity is evaluated; its parameters are frozen during training and restored after).
        model: The student (default: a fresh ``FlowMapModel(dim, hidden, total_time=T)`` with
            weights from ``seed``).
        steps, budget_seconds: Gradient steps and/or wall clock (at least one; the first reached
            ends training). The pool's simulation counts in the time.
        loss: ``"eulerian"`` (default) or ``"lagrangian"``.
        batch_size, lr: Minibatch size and Adam learning rate (cosine decay to 0).
        hidden: Widths of a fresh student (the default, as wide as the flow-matching peers'
            velocity MLP, keeps one map evaluation about as cheap as one velocity evaluation).
        pool_size: Teacher trajectories in the pool.
        seed: Seeds the pool, the batches and a fresh student's weights.
        log_every: Record the loss every this many steps.

    Returns:
        ``(model, history)``; the history's ``seconds`` include the pool's simulation.

    Raises:
        ValueError: An unknown loss, no budget, a student on another time axis or dimension.
    """
    start = time.perf_counter()
    choice("loss", loss, DISTILL_LOSSES)
    budget = TrainingBudget(steps, budget_seconds)
    positive_int("batch_size", batch_size)
    field = VelocityField.from_model(teacher)
    teacher_param = next((q for m in field.modules for q in m.parameters()), None)
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FlowMapModel(field.dim, hidden=tuple(hidden), total_time=field.total_time)
        if teacher_param is not None:  # the teacher's dtype and device
            # nn.Module.to: diffusers' override warns about dtype casts of freshly built models.
            nn.Module.to(model, dtype=teacher_param.dtype, device=teacher_param.device)
    if model.dim != field.dim or not math.isclose(model.total_time, field.total_time, rel_tol=1e-9):
        raise ValueError(
            f"the student (dim {model.dim}, total_time {model.total_time}) does not match the teacher "
            f"(dim {field.dim}, total_time {field.total_time})"
        )
    p = next(model.parameters())
    if teacher_param is not None and teacher_param.dtype != p.dtype:
        field = field.cast(teacher_param.dtype, p.dtype)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    frozen = [(q, q.requires_grad) for m in field.modules for q in m.parameters()]
    for q, _ in frozen:
        q.requires_grad_(False)
    try:
        pool = TeacherPool(field, pool_size, generator=gen, dtype=p.dtype, device=p.device)
        T = field.total_time

        def batch_loss() -> Tensor:
            x, s = pool.draw(batch_size, gen)
            t = s * torch.rand(batch_size, generator=gen, dtype=p.dtype, device=p.device)
            # In units of the normalised time t / T, so that the loss is comparable across teachers.
            return (T * _residual(model, field, loss, x, s, t)).square().sum(-1).mean()

        seconds = (
            None if budget_seconds is None else max(1e-3, budget_seconds - (time.perf_counter() - start))
        )
        history = fit_budgeted(
            model,
            batch_loss,
            TrainingBudget(budget.steps, seconds),
            lr=lr,
            lr_schedule="cosine",
            max_grad_norm=1.0,
            log_every=log_every,
        )
    finally:
        for q, flag in frozen:
            q.requires_grad_(flag)
    history.seconds = time.perf_counter() - start
    return model, history


def load_teacher(folder: str | Path) -> VelocityField:
    """The velocity field of a saved model: a ``JKOFlowPipeline`` folder (``jko-flow train`` /
    ``demo``'s ``model/``: a JKO flow of ODE blocks, or a flow-matching model with its scheduler) or
    a ``FlowMatchingModel.save_pretrained`` folder. Offline; safetensors only.

    Raises:
        FileNotFoundError: ``folder`` holds neither ``model_index.json`` nor ``config.json``.
        ValueError: A saved model without a velocity field (map steps, normflows layers, ...).
    """
    from .adapters.flow_matching import FlowMatchingModel
    from .sampling.pipeline import JKOFlowPipeline

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        model = JKOFlowPipeline.from_pretrained(folder).model
    elif (folder / "config.json").is_file():
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
        if name != "FlowMatchingModel":
            raise ValueError(f"{folder / 'config.json'} describes a {name}, not a FlowMatchingModel")
        model = FlowMatchingModel.from_pretrained(folder, low_cpu_mem_usage=False)
    else:
        raise FileNotFoundError(f"{folder} holds no saved model (model_index.json or config.json)")
    return VelocityField.from_model(model)


def save_flow_map(model: FlowMapModel, folder: str | Path, *, num_inference_steps: int = 4) -> None:
    """Save ``model`` as a ``JKOFlowPipeline`` with a ``FlowMapScheduler`` of ``num_inference_steps``
    jumps by default (``JKOFlowPipeline.from_pretrained(folder)`` loads it offline)."""
    from .sampling.flowmap_scheduler import FlowMapScheduler
    from .sampling.pipeline import JKOFlowPipeline

    scheduler = FlowMapScheduler(total_time=model.total_time, num_inference_steps=num_inference_steps)
    JKOFlowPipeline(model=model, scheduler=scheduler).save_pretrained(folder)


@torch.no_grad()
def teacher_gap(
    model: FlowMapModel, teacher: object, steps: Sequence[int], *, n: int = 2000, seed: int = 0
) -> dict[int, float]:
    """RMS distance, per jump count ``K``, between the map's ``K``-jump samples and the teacher's
    own (RK4, 64 steps over its time axis) from the same ``n`` latents."""
    field = VelocityField.from_model(teacher)
    p = next(model.parameters())
    z = torch.randn(n, field.dim, generator=torch.Generator().manual_seed(seed), dtype=p.dtype).to(p.device)
    ref = field.transport(z, field.total_time, 0.0, steps=64)
    return {
        k: float((model.sample(n, steps=k, latents=z) - ref).square().sum(-1).mean().sqrt()) for k in steps
    }
