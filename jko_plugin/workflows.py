r"""End-to-end recipes behind the CLI: train on data, evaluate, write figures, metrics and the model."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import normflows as nf
import torch
from torch import Tensor

from ._ops import NLL_SOLVER_STEPS
from .datasets.files import validation_split
from .plotting import can_plot, plot_samples, plot_training
from .run_config import RunConfig, default_config
from .sampling.scheduler import JKOScheduler
from .steps.kinds import jko_steps, make_flow
from .steps.normalize import Standardize
from .steps.solver import ode_density_of
from .training.distributed import is_main_process, resolve_device
from .training.history import BlockRecord, StepEvent, TrainingHistory
from .training.trainer import JKOTrainer

__all__ = [
    "NLL_SOLVER_STEPS",
    "RunConfig",
    "TrainedRun",
    "build_flow",
    "default_config",
    "evaluate",
    "make_trainer",
    "ode_density",
    "run_demo",
    "run_training",
    "solver_gap",
    "train_flow",
]


def build_flow(config: RunConfig, dim: int, num_blocks: int | None = None) -> nf.NormalizingFlow:
    """The untrained flow of ``config`` in dimension ``dim`` (``num_blocks`` overrides the
    config's), its weights drawn from ``config.seed`` without touching the global RNG."""
    n = config.num_blocks if num_blocks is None else num_blocks
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_flow(
            dim,
            n,
            block=config.block,
            schedule=config.schedule.step_sizes[:n],
            first=config.first_step_options(dim),
            **config.step_options(),
        )


def make_trainer(
    config: RunConfig, flow: nf.NormalizingFlow, num_points: int, **options: object
) -> JKOTrainer:
    """The ``JKOTrainer`` of ``config`` for ``flow`` on ``num_points`` training points (the batch is
    capped there; within-step early stopping and its patience with ``keep_best`` only, whose
    ``x_val`` is a validation split); ``options`` add or override trainer options."""
    settings = dict(
        iterations=config.iterations,
        batch_size=min(config.batch_size, num_points),
        lr=config.lr,
        seed=config.seed,
        step_checks=config.step_checks if config.keep_best else 0,
        step_patience=config.step_patience if config.keep_best and config.step_checks else 0,
        compile=config.compile,
    )
    settings.update(options)
    return JKOTrainer(flow, config.scheduler(), **settings)


@contextmanager
def ode_density(flow: nf.NormalizingFlow) -> Iterator[nf.NormalizingFlow]:
    """Score ODE blocks whose log-det integrates the divergence (``density="ode"``) with the ODE's
    own density: at least ``NLL_SOLVER_STEPS`` RK4 steps per block. Blocks with an exact map
    density, spline and coupling steps are exact maps already and are left as they are."""
    with ode_density_of(flow.flows):
        yield flow


@torch.no_grad()
def solver_gap(flow: nf.NormalizingFlow, x: Tensor, context: Tensor | None = None) -> float:
    """Mean ``log q(x)`` of the flow as trained minus that of its ODE's own density
    (``ode_density``), in nats: 0 where every block is an exact map or its few-step log-det is the
    ODE's; well above 0 when training learnt a field whose few-step divergence overstates the
    density (a discretisation the optimiser exploited: train with more ``steps``). ``context``:
    the rows' contexts, for a conditional flow.

    >>> flow = make_flow(2, 2, block="ode", hidden=(8,), steps=2, density="ode")
    >>> abs(solver_gap(flow, torch.randn(100, 2))) < 1e-3  # an untrained, smooth field
    True
    """
    was_training = flow.training
    flow.eval()
    try:
        given = () if context is None else (context,)
        trained = flow.log_prob(x, *given).double().mean()
        with ode_density(flow):
            ode = flow.log_prob(x, *given).double().mean()
    finally:
        flow.train(was_training)
    return float(trained - ode)


class TrainedRun(NamedTuple):
    """What ``train_flow`` returns: the flow, its history, the training seconds and the scheduler
    on the time axis the training ended with."""

    flow: nf.NormalizingFlow
    history: TrainingHistory
    seconds: float
    scheduler: JKOScheduler


def train_flow(
    x_train: Tensor,
    x_test: Tensor | None,
    config: RunConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
    on_step: Callable[[StepEvent], None] | None = None,
    callback: Callable[[BlockRecord], None] | None = None,
    context: Tensor | None = None,
    context_test: Tensor | None = None,
) -> TrainedRun:
    """Build the flow of ``config`` (on the data side a ``Standardize`` fitted on ``x_train`` when
    ``config.standardize``) and train it block-wise on ``device`` (``None``: CUDA when available,
    see ``resolve_device``); ``on_step`` and ``callback`` go to ``JKOTrainer.fit``. A conditional
    config trains on the rows' ``context`` (labels or tensor) and measures on ``context_test``."""
    device = resolve_device(device)
    x_val, context_val = x_test, context_test
    if config.keep_best:  # the cut is chosen on training points held out here, never on x_test
        x_train, x_val, context, context_val = validation_split(x_train, config.seed + 1, context)
    flow = build_flow(config, x_train.shape[1])
    if config.standardize:
        flow.flows.append(Standardize.fit(x_train))  # flows[-1]: the data side
    flow = flow.to(device)
    trainer = make_trainer(config, flow, x_train.shape[0], progress=progress, device=str(device))
    start = time.perf_counter()
    history = trainer.fit(
        x_train,
        x_val,
        context=context,
        context_val=context_val,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        overwrite=not resume,
        on_step=on_step,
        callback=callback,
    )
    if config.keep_best:
        trainer.keep_best_steps()
    return TrainedRun(flow, history, time.perf_counter() - start, config.scheduler(trainer.schedule))


@torch.no_grad()
def evaluate(
    flow: nf.NormalizingFlow,
    x_test: Tensor,
    x_ref: Tensor,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    context_test: Tensor | None = None,
) -> dict:
    """Held-out NLL, W2 from ``n`` samples to ``n`` held-out points, and the floor: W2 from ``n``
    points of ``x_ref`` (an independent data sample, e.g. training points) to the same held-out
    points, where ``n = min(num_samples, len(x_test), len(x_ref))``. Also returns the samples.

    A conditional flow is given the held-out contexts ``context_test``: the NLL is then
    ``-log p(x | c)``, and the ``n`` samples are drawn for the contexts of the first ``n`` held-out
    points (so they compare with those points)."""
    from .metrics import checked_wasserstein2, nll

    flow.eval()
    p = next(flow.parameters())
    x_test, x_ref = x_test.to(device=p.device, dtype=p.dtype), x_ref.to(device=p.device, dtype=p.dtype)
    n = min(num_samples, x_test.shape[0], x_ref.shape[0])
    if context_test is not None:
        context_test = context_test.to(p.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples, _ = flow.sample(n) if context_test is None else flow.sample(n, context_test[:n])
    with ode_density(flow):
        test_nll = nll(flow, x_test, context=context_test)
    w2, note = checked_wasserstein2(samples, x_test[:n], "W2 to held-out")
    floor, floor_note = checked_wasserstein2(x_ref[:n], x_test[:n], "the data-vs-data floor")
    return {
        "test_nll": test_nll,
        "w2": w2,
        "w2_floor": floor,
        "w2_samples": n,
        "warnings": [m for m in (note, floor_note) if m],
        "samples": samples,
    }


@torch.no_grad()
def _pushed(flow: nf.NormalizingFlow, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
    """The data after each JKO step (data side first)."""
    out, steps = [], set(map(id, jko_steps(flow)))
    for layer in reversed(flow.flows):
        x, _ = layer.inverse(x) if context is None else layer.inverse(x, context=context)
        if id(layer) in steps:
            out.append(x)
    return out


def run_training(
    x_train: Tensor,
    x_test: Tensor,
    out: str | Path,
    config: RunConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
    log_dir: str | Path | None = None,
    context: Tensor | None = None,
    context_test: Tensor | None = None,
) -> dict:
    """Train, evaluate and write ``metrics.json``, the figures ``samples.png`` and ``training.png``
    (when matplotlib is installed; ``metrics["figures"]`` lists them) and the pipeline in ``out/model``.

    ``device``: where to train and evaluate (``None``: CUDA when available). ``log_dir``: also
    write TensorBoard scalars there (``training.tracking.TensorBoardLogger``; needs tensorboard).
    Under ``torchrun`` every rank trains its shard; rank 0 alone evaluates and writes, and the
    other ranks return ``{}``. A conditional ``config`` takes the rows' ``context`` and
    ``context_test`` (e.g. class labels)."""
    from .sampling.pipeline import JKOFlowPipeline
    from .training.tracking import TensorBoardLogger

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logger = TensorBoardLogger(log_dir) if log_dir is not None and is_main_process() else None
    try:
        flow, history, seconds, scheduler = train_flow(
            x_train,
            x_test,
            config,
            checkpoint_dir=out / "checkpoint",
            resume=resume,
            progress=progress,
            device=device,
            on_step=logger.on_step if logger else None,
            callback=logger.on_block if logger else None,
            context=context,
            context_test=context_test,
        )
    finally:
        if logger is not None:
            logger.close()
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return {}
    result = evaluate(flow, x_test, x_train, seed=config.seed, context_test=context_test)
    samples = result.pop("samples")
    metrics = {
        **result,
        "train_seconds": seconds,
        "num_train": int(x_train.shape[0]),
        "num_test": int(x_test.shape[0]),
        "config": dataclasses.asdict(config),
        "blocks": history.to_dict()["blocks"],
        "data_entropy_knn": history.to_dict()["data_entropy"],
    }
    figures = []
    if can_plot():
        plot_training(history, path=out / "training.png")
        figures.append("training.png")
        if x_test.shape[1] >= 2:
            c = None if context_test is None else context_test.to(samples.device)
            pushed = _pushed(flow, x_test.to(samples.device, samples.dtype), c)
            plot_samples(x_test, samples, pushed, path=out / "samples.png")
            figures.append("samples.png")
    metrics["figures"] = figures
    pipe = JKOFlowPipeline.from_normflows(flow, scheduler=scheduler)
    pipe.save_pretrained(out / "model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def run_demo(
    out: str | Path = "demo_out",
    *,
    block: str = "spline",
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = "cpu",
    log_dir: str | Path | None = None,
    **overrides: object,
) -> dict:
    """Train the default JKO flow on standardised two-moons (noise 0.05) and write its report
    (``device`` and ``log_dir`` as in ``run_training``)."""
    from .datasets import two_moons

    x_train = two_moons(20000, seed=seed, noise=0.05, standardize=True)
    x_test = two_moons(4000, seed=seed + 1, noise=0.05, standardize=True)
    config = default_config(block, seed=seed, **overrides)
    return run_training(x_train, x_test, out, config, progress=progress, device=device, log_dir=log_dir)
