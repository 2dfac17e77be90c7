r"""Training one JKO step on its proximal loss, and measuring the trained step on the data."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..steps.base import ProximalStep, Transport
from ..steps.solver import integrates_divergence, ode_density_of
from .checks import _copy, _ema, check_iterations, choose_on_scored_density
from .distributed import DistributedContext, LossTerms, wrap_ddp
from .history import StepEvent
from .options import OPTIMIZERS, TrainerOptions, TrainingDiverged

__all__ = ["StepFitter", "check_iterations", "probe_iterations", "proximal_terms"]

#: ``torch.compile``'s backend under ``TrainerOptions(compile=True)``.
COMPILE_BACKEND = "inductor"


class StepFitter:
    """Fits one JKO step ``T`` on ``E[|T(x)|^2/2 - log|det dT(x)| + |T(x) - x|^2 / (2 h)]`` and
    measures it; ``JKOTrainer`` calls it once per block.

    A conditional step gets each point's context with it (``context=``: labels ``(n,)`` or a
    tensor ``(n, m)``, row for row with the data): batches are drawn with their contexts, and the
    data are pushed and measured with them.

    Args:
        options: The trainer's options (optimizer, learning rate, batch, chunk and eval sizes, ...).
        ctx: This process's place in a distributed run.
    """

    def __init__(self, options: TrainerOptions, ctx: DistributedContext) -> None:
        self.options, self.ctx = options, ctx

    def optimizer(self, step: nn.Module, iterations: int) -> tuple[object, list[nn.Parameter]]:
        opts = self.options
        params = [p for p in step.parameters() if p.requires_grad]
        optimizer = OPTIMIZERS[opts.optimizer](params, lr=opts.lr, weight_decay=opts.weight_decay)
        sched = None
        if opts.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
        return (optimizer, sched), params

    def loss(
        self,
        step: ProximalStep,
        ddp: nn.Module | None,
        batch: Tensor,
        h: float,
        context: Tensor | None = None,
    ) -> Tensor:
        return _total(self.terms(step, ddp, batch, h, context))

    def terms(
        self,
        step: ProximalStep,
        ddp: nn.Module | None,
        batch: Tensor,
        h: float,
        context: Tensor | None = None,
    ) -> Sequence[Tensor]:
        """The three loss terms on ``batch`` (see ``loss_terms``), through DDP when it wraps the step
        (``context``: the batch's rows' contexts, for a conditional step)."""
        if ddp is None:
            if self.options.compile:
                # h as a tensor: a float would be a constant of the graph, one compilation per step
                h_t = torch.tensor(h, dtype=batch.dtype, device=batch.device)
                kinetic = self.options.transport_cost == "kinetic"
                return _compiled_terms()(step, batch, h_t, context, kinetic)
            return self.loss_terms(step, step.transport(batch, context=context), h)
        given = {} if context is None else {"context": context}
        return self.ctx.guard("DDP forward", lambda: ddp(batch, **given))

    def update(self, loss: Tensor, ddp: nn.Module | None, optimizer: tuple, params: list) -> None:
        opt, sched = optimizer
        opt.zero_grad(set_to_none=True)
        if ddp is None:
            loss.backward()
        else:
            self.ctx.guard("gradient all-reduce", loss.backward)
        if self.options.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.options.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()

    def train(
        self,
        step: ProximalStep,
        data: Tensor,
        h: float,
        k: int,
        iterations: int,
        num_blocks: int,
        on_step: Callable[[StepEvent], None] | None = None,
        context: Tensor | None = None,
        val: Tensor | None = None,
        context_val: Tensor | None = None,
        revise: Callable[[int, float], int] | None = None,
    ) -> tuple[int, int]:
        """Train ``step`` (block ``k`` of ``num_blocks``) for ``iterations`` on ``data``, step size ``h``;
        ``on_step`` gets a ``StepEvent`` after every iteration (``context``: the rows' contexts, for
        a conditional step).

        With ``options.step_checks`` and ``val`` (the validation points pushed to this step), the
        step's proximal loss on ``val`` is measured before training and after ``step_checks``
        iterations (``check_iterations``), and the best of these iterates is kept: a step
        overfits small data within itself, and cutting whole steps afterwards cannot undo that.
        With ``options.step_patience`` as well, training stops after that many checks in a row
        without a better score (the time left goes to the blocks after it).
        ``revise`` (a time budget's, ``TimeBudget.revise``) gets the seconds of the first
        ``probe_iterations(iterations)`` iterations (checks left out) and returns the block's new
        number of iterations (the first iteration's time is replaced by the others' mean: it may
        compile); the checks and the cosine schedule follow it.
        Returns ``(iterations trained, iterations behind the weights kept)``."""
        opts, ctx = self.options, self.ctx
        checks = set(check_iterations(iterations, opts.step_checks)) if val is not None else set()
        # Checks score the density the step trains on (cheap); where that is a few-step ODE
        # log-det, the iterates stay candidates for choose_on_scored_density at the end.
        best = (
            (self.validation_loss(step, val, h, context_val, scored=False), _copy(step), 0)
            if checks
            else None
        )
        candidates = [best[1:]] if checks and integrates_divergence(step) else None
        # The average is a copy of the step that only ever holds averaged weights: it is what the
        # checks score and what the step ends with.
        average = _ema(step, opts.ema) if opts.ema else None
        kept = step if average is None else average.module
        worse = 0  # checks in a row without a better score
        trained = iterations
        optimizer, params = self.optimizer(step, iterations)
        # Rank 0 keeps the single-process seed; other ranks draw other batches and probes.
        seed = opts.seed * 100003 + k + 1000003 * ctx.rank
        gen = torch.Generator().manual_seed(seed)
        n = data.shape[0]
        batch_size = opts.batch_size // ctx.world_size  # this rank's share of the global batch
        order, pos = torch.randperm(n, generator=gen), 0
        step.train()
        # DDP averages the gradients over ranks in backward (its construction copies rank 0's weights).
        ddp = None
        if ctx.active:
            ddp = wrap_ddp(LossTerms(step, lambda s, out: self.loss_terms(s, out, h)), ctx, data.device)
        bar = tqdm(
            total=iterations,
            desc=f"block {k}/{num_blocks}",
            disable=not (opts.progress and ctx.is_main),
            leave=False,
        )
        probe = probe_iterations(iterations) if revise is not None else None
        began, check_seconds, untimed = time.perf_counter(), 0.0, 0
        devices = [data.device.index or 0] if data.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # Hutchinson probes, if any
            it = -1
            while it + 1 < iterations:
                it += 1
                if pos + batch_size > n:
                    order, pos = torch.randperm(n, generator=gen), 0
                rows = order[pos : pos + batch_size].to(data.device)
                batch = data[rows]
                pos += batch_size
                terms = self.terms(step, ddp, batch, h, None if context is None else context[rows])
                loss = _total(terms)
                if (prior := step.penalty()) is not None:  # trained on, never scored
                    loss = loss + prior
                # Decided over all ranks before any backward, so that every rank stops at the same iteration.
                if not ctx.all_true(bool(torch.isfinite(loss))):
                    raise TrainingDiverged(
                        f"block {k} diverged at iteration {it} (loss {loss.item()}); "
                        "lower lr, set grad_clip, or use more solver steps"
                    )
                lr = optimizer[0].param_groups[0]["lr"]
                self.update(loss, ddp, optimizer, params)
                if average is not None:
                    average.update_parameters(step)
                if it == 0 and probe is not None and probe > 1:
                    # Iteration 1 may compile (``compile``) or warm caches: the rate is timed after it.
                    began, untimed = time.perf_counter(), 1
                if on_step is not None:  # float() waits for the device: only when asked for
                    values = [float(t.detach()) for t in terms]
                    on_step(StepEvent(k, it, sum(values), *values, lr))
                bar.update(1)
                if it % 25 == 0 or it == iterations - 1:
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                if it + 1 in checks:
                    check_began = time.perf_counter()
                    score = self.validation_loss(kept, val, h, context_val, scored=False)
                    step.train()
                    check_seconds += time.perf_counter() - check_began
                    improved = score < best[0]
                    state = _copy(kept) if improved or candidates is not None else None
                    if candidates is not None:
                        candidates.append((state, it + 1))
                    if improved:
                        best, worse = (score, state, it + 1), 0
                    else:
                        worse += 1
                    # The score is summed over ranks, so every rank stops at the same iteration.
                    if opts.step_patience and worse >= opts.step_patience:
                        trained = it + 1
                        break
                if it + 1 == probe:
                    spent = (time.perf_counter() - began - check_seconds) * (it + 1) / (it + 1 - untimed)
                    # Every rank must train the same iterations: rank 0's clock decides.
                    iterations = trained = max(it + 1, ctx.broadcast_object(revise(it + 1, spent)))
                    if val is not None:  # the checks still ahead move with the new length
                        checks = set(check_iterations(iterations, opts.step_checks))
                    if optimizer[1] is not None:
                        _stretch_cosine(optimizer[1], iterations)
                    bar.total = iterations
        bar.close()
        if candidates is not None:
            best = choose_on_scored_density(
                step, best, candidates, lambda s: self.validation_loss(s, val, h, context_val)
            )
        if best is None or best[2] == trained:
            if average is not None:
                step.load_state_dict(average.module.state_dict())
            return trained, trained
        step.load_state_dict(best[1])
        return trained, best[2]

    @torch.no_grad()
    def validation_loss(
        self,
        step: ProximalStep,
        val: Tensor,
        h: float,
        context_val: Tensor | None = None,
        *,
        scored: bool = True,
    ) -> float:
        """The step's proximal loss ``|T(x)|^2/2 - log|det dT(x)| + |T(x) - x|^2 / (2h)`` averaged
        over ``val`` (over every rank's rows in a distributed run) with the density it is scored
        with (``push_scored``), or with ``scored=False`` the one it trains on; ``inf`` if not finite."""
        z, log_det = (self.push_scored if scored else self.push)(step, val, context_val)
        rows = 0.5 * z.square().sum(-1) - log_det + (z - val).square().sum(-1) / (2 * h)
        total = torch.tensor([float(rows.double().sum()), float(rows.shape[0])], dtype=torch.float64)
        if self.ctx.active:
            total = self.ctx.all_sum(total)
        score = float(total[0] / total[1])
        return score if math.isfinite(score) else math.inf

    def loss_terms(self, step: ProximalStep, out: Transport, h: float) -> tuple[Tensor, Tensor, Tensor]:
        """Batch means of ``|T(x)|^2/2``, ``-log|det dT|`` (``nan`` without it) and the proximal
        transport term."""
        return proximal_terms(step, out, h, kinetic=self.options.transport_cost == "kinetic")

    @torch.no_grad()
    def push(self, layer: nn.Module, data: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``layer.inverse`` (data -> latent) over ``data`` in chunks: points and log-determinants;
        with a ``context``, each chunk's goes with it (as ``nf.ConditionalNormalizingFlow`` passes it)."""
        layer.eval()
        outs = [
            layer.inverse(chunk) if c is None else layer.inverse(chunk, context=c)
            for chunk, c in zip(
                data.split(self.options.chunk_size), _chunks(context, data, self.options.chunk_size)
            )
        ]
        # e.g. ActNorm returns a scalar log-determinant
        return torch.cat([z for z, _ in outs]), torch.cat([ld.expand(z.shape[0]) for z, ld in outs])

    def push_scored(
        self, step: ProximalStep, val: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``push`` with the density the step will be scored with: an ODE block that integrates
        its divergence (``density="ode"``) is pushed with the ODE's own (``ode_density_of``).
        Checks and records choose on it because the optimiser can exploit a few-step log-det:
        gmm16 at 300 s overstated it by 0.92 nats, moons with 2 RK4 steps by up to 10 (BENCHMARKS.md)."""
        with ode_density_of([step]):
            return self.push(step, val, context)

    @torch.no_grad()
    def diagnose(
        self,
        step: ProximalStep,
        data: Tensor,
        val: Tensor,
        h: float,
        context: Tensor | None = None,
        context_val: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
        """A trained step's pass over the data: ``(T(data), sums of its loss terms, T(val),
        log-dets on val, inversion error on val)``; ``val`` goes through ``push_scored``.

        The training points are pushed without their divergence (one velocity pass per stage
        instead of ``d + 1``), and ``-log|det|`` is averaged over ``eval_size`` of them: in d = 16
        the exact divergence over all training points cost half a block's time. The sums
        (float64, summable over ranks) are those of ``|T(x)|^2/2``, ``-log|det|``, the transport
        term, ``|T(x)-x|^2``, ``|T(x)|^2`` and the count."""
        step.eval()
        eval_size = self.options.eval_size
        inv_err = step.inversion_error(val[:eval_size], context=_head(context_val, eval_size))
        zs, sums, full_log_det = [], torch.zeros(5, dtype=torch.float64), True
        for chunk, c in zip(
            data.split(self.options.chunk_size), _chunks(context, data, self.options.chunk_size)
        ):
            out = step.transport(chunk, log_det=False, context=c)
            potential, _, transport = self.loss_terms(step, out, h)
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
            _, ld = step.inverse(data[:eval_size], context=_head(context, eval_size))
            sums[1] = -ld.double().mean() * data.shape[0]
        sums = torch.cat([sums, torch.tensor([float(data.shape[0])], dtype=torch.float64)])
        val_z, val_ld = self.push_scored(step, val, context_val)
        return torch.cat(zs), sums, val_z, val_ld, inv_err


def proximal_terms(
    step: ProximalStep, out: Transport, h: float | Tensor, kinetic: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch means of ``|T(x)|^2/2``, ``-log|det dT|`` (``nan`` without it) and the transport
    term ``|T(x) - x|^2 / (2h)`` (``kinetic``: the kinetic energy times the step's duration,
    where the step reports one)."""
    potential = 0.5 * out.z.square().sum(-1).mean()
    neg_log_det = -out.log_det.mean() if out.log_det is not None else out.z.new_tensor(math.nan)
    use_kinetic = kinetic and out.kinetic_energy is not None
    cost = out.kinetic_energy * step.duration if use_kinetic else out.sq_displacement
    return potential, neg_log_det, cost.mean() / (2 * h)


def _transport_terms(
    step: ProximalStep, batch: Tensor, h: float | Tensor, context: Tensor | None, kinetic: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return proximal_terms(step, step.transport(batch, context=context), h, kinetic)


_COMPILED: dict[object, Callable] = {}  # by backend


def _compiled_terms() -> Callable:
    # One compiled function for every step and fitter: dynamo's cache lives on the function, and
    # its guards (the step's structure, not its identity) let steps of one architecture share a graph.
    if COMPILE_BACKEND not in _COMPILED:
        if COMPILE_BACKEND == "inductor":
            _check_cpp_compiler()
        _COMPILED[COMPILE_BACKEND] = torch.compile(_transport_terms, backend=COMPILE_BACKEND)
    return _COMPILED[COMPILE_BACKEND]


def _check_cpp_compiler() -> None:
    """Fail at once, in one line, where inductor would fail at its first kernel with a traceback."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as err:  # inductor's InvalidCxxCompiler, or a broken compiler setting
        raise ValueError(
            "compile=True (--compile) needs a C++ compiler for torch.compile's inductor backend "
            f"({err}): install g++ or clang++ (or set CXX), or train without it"
        ) from None


def _stretch_cosine(sched: torch.optim.lr_scheduler.CosineAnnealingLR, total: int) -> None:
    """Re-aim a cosine schedule at ``total`` iterations mid-run. Its recursive update scales the
    current rate, so the rate is first put where the closed form over ``total`` has it."""
    sched.T_max = total
    t = sched.last_epoch
    for group in sched.optimizer.param_groups:
        cosine = (1 + math.cos(math.pi * t / total)) / 2
        group["lr"] = sched.eta_min + (group["initial_lr"] - sched.eta_min) * cosine


def probe_iterations(iterations: int) -> int:
    """After how many of its planned ``iterations`` a block under a time budget measures its own
    rate and revises its length (``TimeBudget.revise``): 4% of them, at least 20 (or all).

    >>> probe_iterations(4400), probe_iterations(100), probe_iterations(8)
    (176, 20, 8)
    """
    return min(iterations, max(20, iterations // 25))


def _total(terms: Sequence[Tensor]) -> Tensor:
    # DDP's module returns the terms stacked, (3,); one process, a tuple of three scalars.
    return terms.sum() if isinstance(terms, Tensor) else sum(terms)


def _chunks(context: Tensor | None, data: Tensor, size: int) -> list[Tensor | None]:
    """``context`` split as ``data.split(size)`` splits the data (``None`` for each chunk without one)."""
    return [None] * len(data.split(size)) if context is None else list(context.split(size))


def _head(context: Tensor | None, n: int) -> Tensor | None:
    return None if context is None else context[:n]
