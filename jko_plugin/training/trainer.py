r"""Block-wise JKO training: each step is trained alone on the data pushed through the steps before it."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import normflows as nf
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validate import as_points
from ..schedule import StepSchedule
from ..steps.base import ProximalStep
from ..steps.block import JKOBlock
from ..steps.context import check_flow_context
from ..steps.kinds import fresh_like, jko_steps
from . import checkpoint
from .budget import FixedIterations, IterationCosts, IterationPlan
from .checkpoint import CheckpointError, commit_checkpoint, fingerprint, load_checkpoint, open_checkpoint
from .distributed import DistributedContext, setup, shard
from .history import BlockRecord, StepEvent, TrainingHistory, conditional_knn_entropy, knn_entropy
from .options import TrainerOptions
from .step_fit import StepFitter
from .surgery import append_step, best_prefix, drop_steps_after, grow_to, renew_steps, warm_start

__all__ = ["JKOTrainer"]

logger = logging.getLogger(__name__)


class JKOTrainer:
    """Trains the JKO steps of a normflows model one at a time (Xu, Cheng, Xie, NeurIPS 2023).

    Step k is trained on ``x ~ rho_{k-1}``, the data pushed through steps 1..k-1 (frozen), with
    ``E[|T(x)|^2/2 - log|det dT(x)| + |T(x) - x|^2 / (2 h_k)]``: one proximal (JKO) step on
    ``KL(. || N(0, I))``. Other normflows layers of the model are applied but not trained.

    Args:
        flow: A ``nf.NormalizingFlow`` with a ``DiagGaussian``-like base, or a list of JKO steps
            (``ProximalStep``s, data side last, as in ``nf.NormalizingFlow``).
        schedule: The step sizes ``h_1..h_N`` (data side first): a ``StepSchedule``, a
            ``JKOScheduler`` or a sequence. The steps are placed on it (``StepSchedule.place``).
        **options: See ``TrainerOptions``; unknown names raise ``TypeError``.

    Example:
        >>> from jko_plugin import make_flow
        >>> flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
        >>> trainer = JKOTrainer(flow, [0.5, 1.0], iterations=5, batch_size=32, progress=False)
        >>> history = trainer.fit(torch.randn(64, 2))
        >>> len(history.blocks), trainer.schedule.boundaries
        (2, (0.0, 0.5, 1.5))
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
        steps = jko_steps(flow)
        if not steps:
            raise ValueError("flow has no JKO step (a ProximalStep such as JKOBlock or JKOStep) to train")
        self.dim = steps[0].dim
        #: The time axis; changes when blocks are appended, dropped or re-spaced.
        self.schedule = StepSchedule.coerce(schedule)
        if self.schedule.num_blocks != len(steps):
            raise ValueError(
                f"schedule has {self.schedule.num_blocks} step sizes but the flow has {len(steps)} JKO steps"
            )
        growth = self.options.growth
        if growth is None:
            growth = getattr(getattr(schedule, "config", None), "get", lambda *_: None)("growth") or 1.0
        self.growth = float(growth)
        self.history = TrainingHistory(options=self.options.model_dict())
        #: This process's place in a distributed run (set by ``fit``; one process by default).
        self.distributed = DistributedContext()

    def _fitter(self) -> StepFitter:
        return StepFitter(self.options, self.distributed)

    @property
    def step_sizes(self) -> list[float]:
        """``[h_1, ..., h_N]`` of ``schedule``."""
        return list(self.schedule.step_sizes)

    # -- public ------------------------------------------------------------------------------
    def fit(
        self,
        x: Tensor | np.ndarray,
        x_val: Tensor | np.ndarray | None = None,
        *,
        context: Tensor | np.ndarray | None = None,
        context_val: Tensor | np.ndarray | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        callback: Callable[[BlockRecord], None] | None = None,
        plan: IterationPlan | None = None,
        on_step: Callable[[StepEvent], None] | None = None,
    ) -> TrainingHistory:
        """Train the flow's JKO steps in place, data side first; return the per-block history.

        Under ``torchrun`` every rank passes the same ``x`` and ``x_val`` and keeps the rows
        ``rank, rank + W, ...``; rank 0's weights are copied to all ranks, gradients averaged by
        ``DistributedDataParallel`` and the per-block figures reduced over all ranks, so every rank
        returns the same history and weights. Only rank 0 writes checkpoints, logs and progress bars.

        A conditional flow (``num_classes`` or ``context_dim`` steps) trains one proximal step per
        context value, each point with its ``context`` (sharded with its row under torchrun); the
        per-block NLL is then ``-log p(x | c)`` and the KL estimate ``E_c KL(rho_k(. | c) || q)``.

        Args:
            x: Training data ``(n, d)``, tensor or array.
            x_val: Held-out data for the diagnostics (and, with ``step_checks``, the validation split
                each step's iterate is chosen on); default: ``eval_size`` training points.
            context: For a conditional flow: labels ``(n,)`` or contexts ``(n, context_dim)``.
            context_val: The contexts of ``x_val`` (required with ``x_val`` for a conditional flow).
            checkpoint_dir: Save weights and history there after every block (atomically).
            resume: Continue from the checkpoint in ``checkpoint_dir`` at the first untrained step.
            overwrite: Allow a fresh run to replace an existing checkpoint.
            callback: Called with each block's record after it is saved (on every rank).
            plan: Iterations per block (``training.budget``: e.g. ``TimeBudget``, which also
                re-plans each block after its first iterations); default
                ``FixedIterations(options.iterations)``. Under torchrun rank 0's plan counts.
            on_step: Called after every training iteration with a ``StepEvent`` (block, iteration,
                loss terms on this rank's batch, learning rate), on every rank: e.g. a tracker.

        Raises:
            ValueError: Bad data (NaN/inf rows, wrong dimension, fewer points than a batch), a
                missing or bad context for a conditional flow, a context for an unconditional one.
            CheckpointError: A missing, corrupt or foreign checkpoint.
            FileExistsError: ``checkpoint_dir`` holds a checkpoint, and neither ``resume`` nor
                ``overwrite`` is set.
            TrainingDiverged: A NaN/inf loss (on any rank); the last good checkpoint is kept.
            DistributedError: Another rank failed or a collective timed out (``dist_timeout``).
        """
        opts = self.options
        plan = plan if plan is not None else FixedIterations(opts.iterations)
        self.history = TrainingHistory(options=self.options.model_dict())  # a fit starts afresh (or resumes)
        device = torch.device(opts.device) if opts.device else next(self.flow.parameters()).device
        ctx = self.distributed = setup(backend=opts.backend, device=device, timeout=opts.dist_timeout)
        if ctx.backend == "nccl" and opts.device is None:
            device = ctx.comm_device
        x, x_val, context, context_val = self._data(x, x_val, context, context_val)
        if opts.adapt and checkpoint_dir is not None:
            raise ValueError("adapt cannot be combined with checkpoint_dir: each round retrains every block")
        if opts.adapt and not all(isinstance(f, JKOBlock) for f in jko_steps(self.flow)):
            raise ValueError("adapt needs a flow whose JKO steps are all JKOBlocks")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        done = 0
        if checkpoint_dir is not None:
            checkpoint_dir = Path(checkpoint_dir)
            loaded = open_checkpoint(ctx, checkpoint_dir, resume=resume, overwrite=overwrite)
            if loaded is not None:
                done = self._restore(checkpoint_dir, loaded)
        self.flow.to(device)
        self.schedule.place(jko_steps(self.flow))
        if ctx.active:
            theirs = ctx.broadcast_object(fingerprint(self.flow))
            if not ctx.all_true(theirs == fingerprint(self.flow)):
                raise ValueError(
                    "the flow differs between ranks (layers or shapes); build the same model on every rank"
                )
            ctx.broadcast_module(self.flow)
        entropy = knn_entropy if context_val is None else lambda v: conditional_knn_entropy(v, context_val)
        self.history.data_entropy = ctx.broadcast_object(entropy(x_val) if ctx.is_main else None)
        x, x_val = shard(x, ctx).to(device), shard(x_val, ctx).to(device)
        contexts = [None if c is None else shard(c, ctx).to(device) for c in (context, context_val)]
        self._run(x, x_val, done, checkpoint_dir, callback, plan, on_step, *contexts)
        for adaptation in opts.adapt:
            self._adapt(adaptation)
            self._run(x, x_val, 0, None, callback, plan, on_step, *contexts)
        self.flow.eval()
        if opts.progress and ctx.is_main:
            tqdm.write(self.history.summary())
        return self.history

    def keep_best_steps(self) -> int:
        """Cut the flow after the step whose ``x_val`` NLL in the last ``fit`` was lowest (each
        prefix of a JKO flow is a density model); returns the steps kept. ``x_val`` must then be a
        validation split, never the points the model is scored on.

        Raises:
            ValueError: No fit has recorded a block yet.
        """
        k = best_prefix([b.nll for b in self.history.blocks[-self.schedule.num_blocks :]])
        if k < self.schedule.num_blocks:
            drop_steps_after(self.flow, k)
            self.schedule = self.schedule.truncate(k)
        return k

    @torch.no_grad()
    def estimate_costs(
        self,
        x: Tensor | np.ndarray,
        x_val: Tensor | np.ndarray | None = None,
        *,
        context: Tensor | np.ndarray | None = None,
        context_val: Tensor | np.ndarray | None = None,
    ) -> IterationCosts:
        """Time this trainer's own work on a throwaway copy of the first step (the flow is untouched):
        a few training iterations, one block's data pass and diagnostics, and the fit's entropy
        estimate. For planning a wall-clock budget (``training.budget.TimeBudget``); ``context``
        and ``context_val`` as in ``fit``."""
        x, x_val, c, c_val = self._data(x, x_val, context, context_val)
        device = next(self.flow.parameters()).device
        x, x_val = x.to(device), x_val.to(device)
        c, c_val = (None if t is None else t.to(device) for t in (c, c_val))
        batch = self.options.batch_size
        step = fresh_like(jko_steps(self.flow)[0], seed=self.options.seed)
        step.set_interval(*self.schedule.intervals[0])
        h = self.schedule.step_sizes[0]
        times = []
        with torch.enable_grad():
            fitter = self._fitter()
            optimizer, params = fitter.optimizer(step, 8)
            step.train()
            for _ in range(8):
                start = time.perf_counter()
                loss = fitter.loss(step, None, x[:batch], h, None if c is None else c[:batch])
                fitter.update(loss, None, optimizer, params)
                times.append(time.perf_counter() - start)
        per_iteration = sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up iterations
        start = time.perf_counter()
        self._fitter().diagnose(step, x, x_val, h, c, c_val)
        per_block = time.perf_counter() - start
        if self.options.step_checks:  # within-step early stopping measures x_val checks + 1 times
            start = time.perf_counter()
            self._fitter().validation_loss(step, x_val, h, c_val)
            per_block += (time.perf_counter() - start) * (self.options.step_checks + 1)
        start = time.perf_counter()
        knn_entropy(x_val) if c_val is None else conditional_knn_entropy(x_val, c_val)
        return IterationCosts(per_iteration, per_block, time.perf_counter() - start)

    # -- the block loop ------------------------------------------------------------------------
    def _data(
        self, x: object, x_val: object, context: object = None, context_val: object = None
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        opts, world = self.options, self.distributed.world_size
        dtype = next(self.flow.parameters()).dtype
        x = as_points(x, "x", dim=self.dim, dtype=dtype)
        context = self._context(context, x.shape[0], "context", dtype)
        if x.shape[0] < opts.batch_size:
            raise ValueError(f"x has {x.shape[0]} points, fewer than batch_size={opts.batch_size}")
        if opts.batch_size % world:
            raise ValueError(
                f"batch_size={opts.batch_size} is the global batch and must be divisible by the "
                f"number of processes, {world}"
            )
        if x_val is None:
            if context_val is not None:
                raise ValueError("context_val was given without x_val")
            if opts.step_checks:
                raise ValueError("step_checks chooses each step's iterate on x_val: pass a validation split")
            gen = torch.Generator().manual_seed(opts.seed)
            rows = torch.randperm(x.shape[0], generator=gen)[: opts.eval_size]
            x_val, context_val = x[rows], None if context is None else context[rows]
            self.history.options["eval_on"] = "training subset"
        else:
            x_val = as_points(x_val, "x_val", dim=self.dim, dtype=dtype)
            context_val = self._context(context_val, x_val.shape[0], "context_val", dtype)
            x_val = x_val[: opts.eval_size]
            context_val = None if context_val is None else context_val[: opts.eval_size]
            self.history.options["eval_on"] = "held-out"
        if x_val.shape[0] < world:
            raise ValueError(f"x_val has {x_val.shape[0]} points, fewer than the {world} processes")
        return x, x_val, context, context_val

    def _context(self, context: object, n: int, name: str, dtype: torch.dtype) -> Tensor | None:
        c = check_flow_context(jko_steps(self.flow), context, n, name=name)
        return c if c is None or not c.is_floating_point() else c.to(dtype)

    def _run(
        self,
        data: Tensor,
        val: Tensor,
        done: int,
        ckpt: Path | None,
        callback: Callable | None,
        plan: IterationPlan,
        on_step: Callable | None = None,
        context: Tensor | None = None,
        context_val: Tensor | None = None,
    ) -> None:
        opts, ctx = self.options, self.distributed
        # Unconditional flows call the fitter exactly as before contexts existed.
        given = {} if context is None else {"context": context}
        given_val = {} if context_val is None else {"context": context_val}
        both = {} if context is None else {"context": context, "context_val": context_val}
        val_log_det = val.new_zeros(val.shape[0])
        k, i = 0, 0
        while i < len(self.flow.flows):
            layer = self.flow.flows[len(self.flow.flows) - 1 - i]  # data side first
            i += 1
            if not isinstance(layer, ProximalStep):
                data, _ = self._fitter().push(layer, data, **given)
                val, ld = self._fitter().push(layer, val, **given_val)
                val_log_det = val_log_det + ld
                continue
            k += 1
            h = self.schedule.step_sizes[k - 1]
            start = time.perf_counter()
            iterations = kept = 0
            if k > done:
                if opts.warm_start and k > 1:
                    warm_start(layer, jko_steps(self.flow)[k - 2])
                # Rank 0's plan: every rank must train (and revise) the same iterations.
                planned = ctx.broadcast_object(plan.iterations(k, self.history))
                iterations, kept = self._fitter().train(
                    layer,
                    data,
                    h,
                    k,
                    planned,
                    self.schedule.num_blocks,
                    on_step,
                    val=val,
                    revise=getattr(plan, "revise", None),  # a time budget corrects its estimate
                    **both,
                )
            data, sums, val, ld, inv_err = self._fitter().diagnose(layer, data, val, h, **both)
            val_log_det = val_log_det + ld
            if k > done:
                nlls = -self.flow.q0.log_prob(val) - val_log_det
                record = self._record(
                    k, h, sums, nlls, inv_err, time.perf_counter() - start, iterations, kept
                )
                self.history.blocks.append(record)
                if ctx.is_main:
                    logger.info("block %d: %s", k, record)
                self.history.converged = record.movement_ratio < opts.tol
                if ckpt is not None:
                    commit_checkpoint(ctx, ckpt, self.flow, self._state(k))
                if callback is not None:
                    callback(record)
            converged = self.history.blocks[k - 1].movement_ratio < opts.tol
            is_last = k == self.schedule.num_blocks
            if converged and opts.stop_early and not is_last:
                drop_steps_after(self.flow, k)
                self.schedule = self.schedule.truncate(k)
            elif is_last and not converged and opts.max_blocks is not None and k < opts.max_blocks:
                append_step(self.flow, seed=opts.seed * 100003 + 50000 + k)
                self.schedule = self.schedule.extend(self.growth)
                self.schedule.place(jko_steps(self.flow))

    def _record(
        self, k: int, h: float, sums: Tensor, nlls: Tensor, inv_err: float, seconds: float, *its: int
    ) -> BlockRecord:
        ctx = self.distributed
        if ctx.active:
            # Sums over all ranks (and rank 0's clock), the same bits on every rank.
            n_val = nlls.shape[0]
            local = [float(nlls.double().sum()), inv_err * n_val, float(n_val), seconds * ctx.is_main]
            total = ctx.all_sum(torch.cat([sums, torch.tensor(local, dtype=torch.float64)]))
            sums = total[: sums.numel()]
            nll_sum, inv_sum, n_val, seconds = (float(v) for v in total[sums.numel() :])
            nll, inv_err = nll_sum / n_val, inv_sum / n_val
        else:
            nll = float(nlls.mean())
        return BlockRecord.from_sums(k, h, sums, nll, self.history.data_entropy, inv_err, seconds, *its)

    # -- schedule adaptation and checkpoints -----------------------------------------------------
    def _adapt(self, kind: str) -> None:
        """Replace the schedule by its re-spaced or refined version and renew every block."""
        if kind == "reparametrize":
            new = self.schedule.reparametrize([max(b.w2_movement, 1e-12) for b in self.history.blocks])
        else:
            new = self.schedule.refine()
        renew_steps(self.flow, new.num_blocks, seed=self.options.seed * 100003 + 50000)
        self.schedule = new
        self.schedule.place(jko_steps(self.flow))
        self.history.blocks = []

    def _state(self, trained: int) -> dict:
        return {
            "blocks_trained": trained,
            "num_steps": len(jko_steps(self.flow)),
            "step_sizes": list(self.schedule.step_sizes),
            "options": self.options.model_dict(),
            "history": self.history.to_dict(),
        }

    def _restore(self, directory: Path, loaded: tuple[dict, dict] | None = None) -> int:
        meta, weights = loaded if loaded is not None else load_checkpoint(directory)
        ours = self.options.model_dict()
        # Options added since the checkpoint was written take their defaults there.
        theirs = {**TrainerOptions().model_dict(), **meta.get("options", {})}
        if theirs != ours:
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise CheckpointError(f"checkpoint in {directory} was made with other trainer options: {diff}")
        sizes = [float(h) for h in meta["step_sizes"]]
        given = self.schedule.num_blocks
        if sizes[:given] != list(self.schedule.step_sizes):
            raise CheckpointError(
                f"checkpoint in {directory} has step sizes {sizes[:given]}, this run {self.step_sizes}"
            )
        # Blocks appended by max_blocks in the saved run are appended here too (weights come from the file).
        grow_to(self.flow, int(meta["num_steps"]), seed=self.options.seed * 100003 + 50000)
        self.schedule = StepSchedule(tuple(sizes))
        checkpoint.check_model(self.flow, meta["fingerprint"], directory)
        self.flow.load_state_dict(weights)
        self.history = TrainingHistory.from_dict(meta["history"])
        return int(meta["blocks_trained"])
