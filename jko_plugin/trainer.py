r"""Block-wise JKO training: each step is trained alone on the data pushed through the steps before it."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import normflows as nf
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._ops import check_choice
from .block import JKOBlock, Transport
from .checkpoint import CheckpointError, fingerprint, has_checkpoint, load_checkpoint, save_checkpoint
from .distributed import BACKENDS, DistributedContext, DistributedError, LossTerms, setup, shard, wrap_ddp
from .history import BlockRecord, TrainingHistory, knn_entropy
from .step import JKOStep

__all__ = ["JKOTrainer", "TrainerOptions", "TrainingDiverged", "OPTIMIZERS"]

logger = logging.getLogger(__name__)

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
LR_SCHEDULES = ("cosine", "constant")
TRANSPORT_COSTS = ("displacement", "kinetic")
ADAPTATIONS = ("reparametrize", "refine")
# Options that change the trained model; a checkpoint made with other values is another model's.
_MODEL_OPTIONS = (
    "iterations",
    "batch_size",
    "optimizer",
    "lr",
    "lr_schedule",
    "weight_decay",
    "grad_clip",
    "warm_start",
    "transport_cost",
    "tol",
    "max_blocks",
    "growth",
    "stop_early",
    "seed",
    "adapt",
)


class TrainingDiverged(RuntimeError):
    """The loss of a block became NaN or infinite; earlier checkpoints are left untouched."""


@dataclass(frozen=True)
class TrainerOptions:
    """Options of ``JKOTrainer`` (all keyword arguments of its constructor).

    Attributes:
        iterations: Gradient steps per block.
        batch_size: Mini-batch size; the data must hold at least this many points. Under
            ``torchrun`` this is the global batch: each of the ``W`` ranks draws
            ``batch_size / W`` points from its shard (``batch_size`` must be divisible by ``W``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: Learning rate.
        lr_schedule: ``"cosine"`` (decay to 0 within each block) or ``"constant"``.
        weight_decay: Optimizer weight decay.
        grad_clip: Max gradient norm, or ``None``.
        warm_start: Start each block from the previous block's weights (same architecture).
        transport_cost: ``"displacement"``, ``E|T(x) - x|^2 / (2h)``, or ``"kinetic"``,
            ``(t1 - t0) * E int |f|^2 dt / (2h)`` (an upper bound; ODE blocks only, spline steps
            fall back to the displacement).
        tol: Stopping rule: converged once ``E|T(x)-x|^2 / E|T(x)|^2 < tol``.
        max_blocks: Append blocks (like the last one, step size times ``growth``) while not
            converged, up to this many JKO steps in all. ``None``: train the given steps only.
        growth: Step-size ratio for appended blocks; default the scheduler's ``growth`` or 1.
        stop_early: Once converged, drop the JKO steps not yet trained instead of training them.
        seed: Seed of batches, probes and initialisation of appended blocks: same seed, same model.
        adapt: Schedule adaptations applied after the first pass, in order, each followed by
            retraining every block from a fresh start (JKO-iFlow): ``"reparametrize"`` re-spaces
            the steps so that each block moves the same W2 distance
            (``JKOScheduler.reparametrize``), ``"refine"`` halves every step (twice the blocks,
            ``JKOScheduler.refine``). ODE blocks only; not combined with checkpoints.
        device: Device to train on (default: where the flow's parameters are).
        chunk_size: Rows per chunk when pushing data through trained blocks (bounds memory).
        eval_size: Held-out points used for the per-block NLL, KL estimate and inversion error.
        progress: Show a tqdm bar per block and print the summary table (rank 0 only).
        backend: Distributed backend when launched by ``torchrun`` (``WORLD_SIZE > 1``):
            ``"gloo"``, ``"nccl"``, or ``None``: NCCL when training on CUDA, gloo on CPU. A
            process group the caller initialised is used as it is.
        dist_timeout: Seconds a collective waits for the other ranks before the run stops with
            ``DistributedError`` (a rank that died never leaves the others hanging).
    """

    iterations: int = 300
    batch_size: int = 512
    optimizer: str = "adam"
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    warm_start: bool = False
    transport_cost: str = "displacement"
    tol: float = 0.01
    max_blocks: int | None = None
    growth: float | None = None
    stop_early: bool = False
    seed: int = 0
    adapt: tuple[str, ...] = ()
    device: str | None = None
    chunk_size: int = 8192
    eval_size: int = 2000
    progress: bool = True
    backend: str | None = None
    dist_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.backend is not None:
            check_choice("backend", self.backend, BACKENDS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("transport_cost", self.transport_cost, TRANSPORT_COSTS)
        if isinstance(self.adapt, str):
            object.__setattr__(self, "adapt", (self.adapt,))
        object.__setattr__(self, "adapt", tuple(self.adapt))
        for a in self.adapt:
            check_choice("adapt", a, ADAPTATIONS)
        for name in ("iterations", "batch_size", "chunk_size", "eval_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "tol", "dist_timeout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.growth is not None and not self.growth > 0:
            raise ValueError(f"growth must be positive or None, got {self.growth!r}")
        if self.max_blocks is not None and (not isinstance(self.max_blocks, int) or self.max_blocks < 1):
            raise ValueError(f"max_blocks must be a positive integer or None, got {self.max_blocks!r}")


def _step_sizes(schedule: object) -> list[float]:
    sizes = getattr(schedule, "step_sizes", schedule)
    try:
        sizes = [float(h) for h in sizes]
    except TypeError as err:
        raise ValueError(
            f"schedule must be a JKOScheduler or a sequence of step sizes, got {schedule!r}"
        ) from err
    bad = [h for h in sizes if not (h > 0 and math.isfinite(h))]
    if bad:
        raise ValueError(f"step sizes h must be positive and finite, got {bad}")
    return sizes


def _is_jko(layer: nn.Module) -> bool:
    return isinstance(layer, (JKOBlock, JKOStep))


def _as_data(x: Tensor | np.ndarray, dim: int, dtype: torch.dtype, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, {dim}), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, the model's is {dim}")
    if not x.is_floating_point():
        x = x.to(dtype)
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        raise ValueError(f"{name} has NaN or inf in {int(bad.sum())} of {x.shape[0]} rows")
    return x.to(dtype)


class JKOTrainer:
    """Trains the JKO steps of a normflows model one at a time (Xu, Cheng, Xie, NeurIPS 2023).

    Step k is trained on ``x ~ rho_{k-1}``, the data pushed through steps 1..k-1 (frozen), with
    ``E[|T(x)|^2/2 - log|det dT(x)| + |T(x) - x|^2 / (2 h_k)]``: one proximal (JKO) step on
    ``KL(. || N(0, I))``. Other normflows layers of the model are applied but not trained.

    Args:
        flow: A ``nf.NormalizingFlow`` with a ``DiagGaussian``-like base, or a list of JKO steps
            (``JKOBlock``/``JKOStep``, data side last, as in ``nf.NormalizingFlow``).
        schedule: Step sizes ``h_1..h_N`` (data side first): a ``JKOScheduler`` or a sequence.
        **options: See ``TrainerOptions``; unknown names raise ``TypeError``.

    Example:
        >>> from jko_plugin import make_flow
        >>> flow = make_flow(2, 2, hidden=(16,), steps=1)
        >>> trainer = JKOTrainer(flow, [0.5, 1.0], iterations=5, batch_size=32, progress=False)
        >>> history = trainer.fit(torch.randn(64, 2))
        >>> len(history.blocks)
        2
    """

    def __init__(
        self, flow: nf.NormalizingFlow | Sequence[nn.Module], schedule: object, **options: object
    ) -> None:
        fields = {f.name for f in dataclasses.fields(TrainerOptions)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unknown JKOTrainer options {unknown}; valid options are {sorted(fields)}")
        self.options = TrainerOptions(**options)
        if not isinstance(flow, nf.NormalizingFlow):
            layers = list(flow)
            if not layers:
                raise ValueError("flow must hold at least one JKO step, got an empty list")
            flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(layers[0].dim, trainable=False), layers)
        self.flow = flow
        steps = [f for f in flow.flows if _is_jko(f)]
        if not steps:
            raise ValueError("flow has no JKOBlock or JKOStep to train")
        self.dim = steps[0].dim
        self.step_sizes = _step_sizes(schedule)
        if len(self.step_sizes) != len(steps):
            raise ValueError(
                f"schedule has {len(self.step_sizes)} step sizes but the flow has {len(steps)} JKO steps"
            )
        growth = self.options.growth
        if growth is None:
            growth = getattr(getattr(schedule, "config", None), "get", lambda *_: None)("growth") or 1.0
        self.growth = float(growth)
        self.history = TrainingHistory(options=self._options_dict())
        #: This process's place in a distributed run (set by ``fit``; one process by default).
        self.distributed = DistributedContext()

    # -- public ------------------------------------------------------------------------------
    def fit(
        self,
        x: Tensor | np.ndarray,
        x_val: Tensor | np.ndarray | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        callback: Callable[[BlockRecord], None] | None = None,
    ) -> TrainingHistory:
        """Train the flow's JKO steps in place, data side first; return the per-block history.

        Under ``torchrun`` (or in an initialised process group) every rank passes the same ``x``
        and ``x_val`` and keeps the rows ``rank, rank + W, ...`` of each; rank 0's weights are
        copied to all ranks first, gradients are averaged by ``DistributedDataParallel``, and the
        per-block figures are reduced over all ranks, so every rank returns the same history and
        ends with the same weights. Only rank 0 writes checkpoints, logs and progress bars.

        Args:
            x: Training data ``(n, d)``, tensor or array.
            x_val: Held-out data for the diagnostics; default: ``eval_size`` training points.
            checkpoint_dir: Save weights and history there after every block (atomically).
            resume: Continue from the checkpoint in ``checkpoint_dir`` at the first untrained step.
            overwrite: Allow a fresh run to replace an existing checkpoint.
            callback: Called with each block's record after it is saved (on every rank).

        Raises:
            ValueError: Bad data (NaN/inf rows, wrong dimension, fewer points than a batch).
            CheckpointError: A missing, corrupt or foreign checkpoint.
            FileExistsError: ``checkpoint_dir`` holds a checkpoint, and neither ``resume`` nor
                ``overwrite`` is set.
            TrainingDiverged: A NaN/inf loss (on any rank); the last good checkpoint is kept.
            DistributedError: Another rank failed or a collective timed out (``dist_timeout``).
        """
        opts = self.options
        device = torch.device(opts.device) if opts.device else next(self.flow.parameters()).device
        ctx = self.distributed = setup(backend=opts.backend, device=device, timeout=opts.dist_timeout)
        if ctx.backend == "nccl" and opts.device is None:
            device = ctx.comm_device
        dtype = next(self.flow.parameters()).dtype
        x = _as_data(x, self.dim, dtype, "x")
        if x.shape[0] < opts.batch_size:
            raise ValueError(f"x has {x.shape[0]} points, fewer than batch_size={opts.batch_size}")
        if opts.batch_size % ctx.world_size:
            raise ValueError(
                f"batch_size={opts.batch_size} is the global batch and must be divisible by the "
                f"number of processes, {ctx.world_size}"
            )
        if x_val is None:
            gen = torch.Generator().manual_seed(opts.seed)
            x_val = x[torch.randperm(x.shape[0], generator=gen)[: opts.eval_size]]
            self.history.options["eval_on"] = "training subset"
        else:
            x_val = _as_data(x_val, self.dim, dtype, "x_val")[: opts.eval_size]
            self.history.options["eval_on"] = "held-out"
        if x_val.shape[0] < ctx.world_size:
            raise ValueError(f"x_val has {x_val.shape[0]} points, fewer than the {ctx.world_size} processes")
        done = 0
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            # Rank 0 reads the checkpoint and hands it to the others (no shared file system needed).
            loaded, error = None, None
            if ctx.is_main:
                try:
                    if resume and has_checkpoint(checkpoint_dir):
                        loaded = load_checkpoint(checkpoint_dir)
                    elif has_checkpoint(checkpoint_dir) and not overwrite:
                        error = FileExistsError(
                            f"{checkpoint_dir} already holds a checkpoint; pass resume=True to continue it "
                            "or overwrite=True to replace it"
                        )
                except CheckpointError as err:
                    error = err
            loaded, error = ctx.broadcast_object((loaded, error))
            if error is not None:
                raise error
            if loaded is not None:
                done = self._restore(checkpoint_dir, loaded)
        elif resume:
            raise ValueError("resume=True needs a checkpoint_dir")
        if opts.adapt and checkpoint_dir is not None:
            raise ValueError("adapt cannot be combined with checkpoint_dir: each round retrains every block")
        if opts.adapt and not all(isinstance(f, JKOBlock) for f in self.flow.flows if _is_jko(f)):
            raise ValueError("adapt needs a flow whose JKO steps are all JKOBlocks")
        self.flow.to(device)
        self._place_blocks()
        if ctx.active:
            theirs = ctx.broadcast_object(fingerprint(self.flow))
            if not ctx.all_true(theirs == fingerprint(self.flow)):
                raise ValueError(
                    "the flow differs between ranks (layers or shapes); build the same model on every rank"
                )
            ctx.broadcast_module(self.flow)
        self.history.data_entropy = ctx.broadcast_object(knn_entropy(x_val) if ctx.is_main else None)
        x, x_val = shard(x, ctx), shard(x_val, ctx)
        self._run(x.to(device), x_val.to(device), done, checkpoint_dir, callback)
        for adaptation in opts.adapt:
            self._adapt(adaptation)
            self._run(x.to(device), x_val.to(device), 0, None, callback)
        self.flow.eval()
        if opts.progress and ctx.is_main:
            tqdm.write(self.history.summary())
        return self.history

    # -- the block loop ------------------------------------------------------------------------
    def _run(
        self, data: Tensor, val: Tensor, done: int, ckpt: Path | None, callback: Callable | None
    ) -> None:
        opts = self.options
        ctx = self.distributed
        val_log_det = val.new_zeros(val.shape[0])
        k, i = 0, 0
        layers = list(reversed(self.flow.flows))
        while i < len(layers):
            layer = layers[i]
            if not _is_jko(layer):
                data, _ = self._push(layer, data)
                val, ld = self._push(layer, val)
                val_log_det = val_log_det + ld
                i += 1
                continue
            k += 1
            h = self.step_sizes[k - 1]
            start = time.perf_counter()
            if k > done:
                if opts.warm_start and k > 1:
                    self._warm_start(layer, [s for s in layers[:i] if _is_jko(s)][-1])
                self._train_block(layer, data, h, k)
            layer.eval()
            inv_err = layer.inversion_error(val[: opts.eval_size])
            data, sums = self._push(layer, data, h)
            val, ld = self._push(layer, val)
            val_log_det = val_log_det + ld
            if k > done:
                nlls = -self.flow.q0.log_prob(val) - val_log_det
                seconds = time.perf_counter() - start
                if ctx.active:
                    # Sums over all ranks (and rank 0's clock), the same bits on every rank.
                    n_val = val.shape[0]
                    local = [float(nlls.double().sum()), inv_err * n_val, float(n_val), seconds * ctx.is_main]
                    total = ctx.all_sum(torch.cat([sums, torch.tensor(local, dtype=torch.float64)]))
                    sums = total[: sums.numel()]
                    nll_sum, inv_sum, n_val, seconds = (float(v) for v in total[sums.numel() :])
                    nll, inv_err = nll_sum / n_val, inv_sum / n_val
                else:
                    nll = float(nlls.mean())
                record = BlockRecord(
                    index=k,
                    step_size=h,
                    **self._stats(sums),
                    kl_estimate=nll - self.history.data_entropy,
                    nll=nll,
                    inversion_error=inv_err,
                    seconds=seconds,
                )
                self.history.blocks.append(record)
                if ctx.is_main:
                    logger.info("block %d: %s", k, record)
                self.history.converged = record.movement_ratio < opts.tol
                if ckpt is not None:
                    failure = None
                    if ctx.is_main:
                        try:
                            save_checkpoint(ckpt, self.flow, self._state(k))
                        except OSError as err:
                            failure = err
                    # Also the barrier after the save: no rank runs ahead of a checkpoint.
                    if not ctx.all_true(failure is None):
                        if failure is not None:
                            raise failure
                        raise DistributedError(f"rank 0 could not save the checkpoint of block {k} in {ckpt}")
                if callback is not None:
                    callback(record)
            converged = self.history.blocks[k - 1].movement_ratio < opts.tol
            is_last = not any(_is_jko(s) for s in layers[i + 1 :])
            if converged and opts.stop_early and not is_last:
                layers = [s for j, s in enumerate(layers) if j <= i or not _is_jko(s)]
                self.flow.flows = nn.ModuleList(reversed(layers))
                self.step_sizes = self.step_sizes[:k]
            elif is_last and not converged and opts.max_blocks is not None and k < opts.max_blocks:
                layers.insert(i + 1, self._new_block(layer, k))
                self.step_sizes.append(self.step_sizes[-1] * self.growth)
                self.flow.flows = nn.ModuleList(reversed(layers))
                self._place_blocks()
            i += 1

    def _train_block(self, step: nn.Module, data: Tensor, h: float, k: int) -> None:
        opts = self.options
        params = [p for p in step.parameters() if p.requires_grad]
        kwargs = {"lr": opts.lr, "weight_decay": opts.weight_decay}
        optimizer = OPTIMIZERS[opts.optimizer](params, **kwargs)
        sched = None
        if opts.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.iterations)
        ctx = self.distributed
        # Rank 0 keeps the single-process seed; other ranks draw other batches and probes.
        seed = opts.seed * 100003 + k + 1000003 * ctx.rank
        gen = torch.Generator().manual_seed(seed)
        n = data.shape[0]
        batch_size = opts.batch_size // ctx.world_size  # this rank's share of the global batch
        order = torch.randperm(n, generator=gen)
        pos = 0
        step.train()
        # DDP averages the gradients over ranks in backward (its construction copies rank 0's weights).
        ddp = (
            wrap_ddp(LossTerms(step, lambda s, out: self._loss_terms(s, out, h)), ctx, data.device)
            if ctx.active
            else None
        )
        bar = tqdm(
            range(opts.iterations),
            desc=f"block {k}/{len(self.step_sizes)}",
            disable=not (opts.progress and ctx.is_main),
            leave=False,
        )
        devices = [data.device.index or 0] if data.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # Hutchinson probes, if any
            for it in bar:
                if pos + batch_size > n:
                    order, pos = torch.randperm(n, generator=gen), 0
                batch = data[order[pos : pos + batch_size].to(data.device)]
                pos += batch_size
                if ddp is None:
                    potential, neg_log_det, transport = self._loss_terms(step, step.transport(batch), h)
                else:
                    potential, neg_log_det, transport = ctx.guard("DDP forward", lambda: ddp(batch)).unbind()
                loss = potential + neg_log_det + transport
                # Decided over all ranks, so that every rank stops at the same iteration.
                if not ctx.all_true(bool(torch.isfinite(loss))):
                    raise TrainingDiverged(
                        f"block {k} diverged at iteration {it} (loss {loss.item()}); "
                        "lower lr, set grad_clip, or use more solver steps"
                    )
                optimizer.zero_grad(set_to_none=True)
                if ddp is None:
                    loss.backward()
                else:
                    ctx.guard("gradient all-reduce", loss.backward)
                if opts.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
                optimizer.step()
                if sched is not None:
                    sched.step()
                if it % 25 == 0 or it == opts.iterations - 1:
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)

    def _loss_terms(self, step: nn.Module, out: Transport, h: float) -> tuple[Tensor, Tensor, Tensor]:
        """Batch means of ``|T(x)|^2/2``, ``-log|det dT|`` (``nan`` without it) and the proximal
        transport term."""
        potential = 0.5 * out.z.square().sum(-1).mean()
        neg_log_det = -out.log_det.mean() if out.log_det is not None else out.z.new_tensor(math.nan)
        if self.options.transport_cost == "kinetic" and out.kinetic_energy is not None:
            cost = out.kinetic_energy * step.duration
        else:
            cost = out.sq_displacement
        return potential, neg_log_det, cost.mean() / (2 * h)

    @torch.no_grad()
    def _push(self, layer: nn.Module, data: Tensor, h: float | None = None) -> tuple[Tensor, Tensor]:
        """Push ``data`` through ``layer`` (data -> latent) in chunks; with ``h``, also the sums of
        the block's loss terms, ``|T(x)-x|^2``, ``|T(x)|^2`` and the count (float64, for
        ``_stats``, summable over ranks), else the log-determinants.

        With ``h`` an ODE block pushes the points without their divergence (one velocity pass per
        stage instead of ``d + 1``) and ``-log|det|`` is averaged over ``eval_size`` of them: in
        d = 16 the exact divergence over all training points cost half a block's time budget."""
        layer.eval()
        if h is None:
            outs = [layer.inverse(chunk) for chunk in data.split(self.options.chunk_size)]
            # e.g. ActNorm returns a scalar log-determinant
            return torch.cat([z for z, _ in outs]), torch.cat([ld.expand(z.shape[0]) for z, ld in outs])
        zs, sums, full_log_det = [], torch.zeros(5, dtype=torch.float64), True
        for chunk in data.split(self.options.chunk_size):
            out = layer.transport(chunk, log_det=False)
            potential, _, transport = self._loss_terms(layer, out, h)
            full_log_det = full_log_det and out.log_det is not None
            sums += torch.tensor(
                [
                    float(potential) * len(chunk),
                    -float(out.log_det.sum()) if full_log_det else 0.0,
                    float(transport) * len(chunk),
                    float(out.sq_displacement.sum()),
                    float(out.z.square().sum()),
                ],
                dtype=torch.float64,
            )
            zs.append(out.z)
        if not full_log_det:
            _, ld = layer.inverse(data[: self.options.eval_size])
            sums[1] = -ld.double().mean() * data.shape[0]
        return torch.cat(zs), torch.cat([sums, torch.tensor([float(data.shape[0])], dtype=torch.float64)])

    @staticmethod
    def _stats(sums: Tensor) -> dict:
        """The block's figures from ``_push``'s sums."""
        potential, neg_log_det, transport, sq_disp, sq_norm, n = (float(s) for s in sums)
        return {
            "potential": potential / n,
            "neg_log_det": neg_log_det / n,
            "transport": transport / n,
            "loss": (potential + neg_log_det + transport) / n,
            "w2_movement": math.sqrt(sq_disp / n),
            "movement_ratio": sq_disp / max(sq_norm, 1e-300),
        }

    # -- structure -----------------------------------------------------------------------------
    def _place_blocks(self) -> None:
        """Put ODE block k on ``[T_{k-1}, T_k]`` with ``T_k = h_1 + ... + h_k``."""
        t = 0.0
        steps = [f for f in reversed(self.flow.flows) if _is_jko(f)]
        for step, h in zip(steps, self.step_sizes):
            if isinstance(step, JKOBlock):
                step.set_interval(t, t + h)
            t += h

    def _new_block(self, last: nn.Module, k: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.seed * 100003 + 50000 + k)
            if isinstance(last, JKOBlock):
                block = JKOBlock(**last.config())
            else:
                block = copy.deepcopy(last)
                for m in block.modules():
                    if hasattr(m, "reset_parameters") and m is not block:
                        m.reset_parameters()
        p = next(last.parameters())
        return block.to(device=p.device, dtype=p.dtype)

    def _adapt(self, kind: str) -> None:
        """Replace the schedule by its re-spaced or refined version and reset every block."""
        from .scheduler import JKOScheduler

        current = JKOScheduler(step_sizes=self.step_sizes)
        if kind == "reparametrize":
            new = current.reparametrize([max(b.w2_movement, 1e-12) for b in self.history.blocks])
        else:
            new = current.refine()
        layers = list(reversed(self.flow.flows))
        template = next(s for s in layers if _is_jko(s))
        for j, layer in enumerate(layers):
            if _is_jko(layer):
                layers[j] = self._new_block(template, j)
        while sum(1 for s in layers if _is_jko(s)) < len(new.step_sizes):
            last = max(j for j, s in enumerate(layers) if _is_jko(s))
            layers.insert(last + 1, self._new_block(template, len(layers)))
        self.flow.flows = nn.ModuleList(reversed(layers))
        self.step_sizes = [float(h) for h in new.step_sizes]
        self._place_blocks()
        self.history.blocks = []

    @staticmethod
    def _warm_start(step: nn.Module, previous: nn.Module) -> None:
        if type(step) is not type(previous):
            return
        state = {k: v for k, v in previous.state_dict().items() if k != "interval"}
        step.load_state_dict(state, strict=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def _options_dict(self) -> dict:
        # As JSON would give them back (tuples become lists), so that saved and live compare equal.
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(self.options, k)) for k in _MODEL_OPTIONS)
        }

    def _state(self, trained: int) -> dict:
        return {
            "blocks_trained": trained,
            "num_steps": sum(1 for f in self.flow.flows if _is_jko(f)),
            "step_sizes": self.step_sizes,
            "options": self._options_dict(),
            "history": self.history.to_dict(),
        }

    def _restore(self, directory: Path, loaded: tuple[dict, dict] | None = None) -> int:
        meta, weights = loaded if loaded is not None else load_checkpoint(directory)
        if meta.get("options") != self._options_dict():
            theirs = meta.get("options", {})
            diff = sorted(
                k
                for k in set(theirs) | set(self._options_dict())
                if theirs.get(k) != self._options_dict().get(k)
            )
            raise CheckpointError(f"checkpoint in {directory} was made with other trainer options: {diff}")
        sizes = [float(h) for h in meta["step_sizes"]]
        given = len(self.step_sizes)
        if sizes[:given] != self.step_sizes:
            raise CheckpointError(
                f"checkpoint in {directory} has step sizes {sizes[:given]}, this run {self.step_sizes}"
            )
        # Blocks appended by max_blocks in the saved run are appended here too before loading.
        while sum(1 for f in self.flow.flows if _is_jko(f)) < meta["num_steps"]:
            layers = list(reversed(self.flow.flows))
            last = max(j for j, s in enumerate(layers) if _is_jko(s))
            # Weights come from the checkpoint; the new block only supplies the structure.
            layers.insert(last + 1, self._new_block(layers[last], sum(1 for s in layers if _is_jko(s))))
            self.flow.flows = nn.ModuleList(reversed(layers))
        self.step_sizes = sizes
        if fingerprint(self.flow) != meta["fingerprint"]:
            raise CheckpointError(f"checkpoint in {directory} holds another model (layers or shapes differ)")
        self.flow.load_state_dict(weights)
        self.history = TrainingHistory.from_dict(meta["history"])
        return int(meta["blocks_trained"])
