r"""End-to-end recipes behind the CLI: train on data, evaluate, write figures, metrics and the model."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import normflows as nf
import torch
from torch import Tensor

from ._ops import check_choice
from .block import TRACE_ESTIMATORS, JKOBlock
from .distributed import is_main_process
from .flows import BLOCK_KINDS, jko_steps, make_flow, solver_steps
from .history import TrainingHistory
from .trainer import JKOTrainer

__all__ = [
    "RunConfig",
    "build_flow",
    "default_config",
    "ode_density",
    "train_flow",
    "evaluate",
    "plot_samples",
    "run_training",
    "run_demo",
]


#: RK4 steps per ODE block (at least) when ``evaluate`` scores the test NLL.
NLL_SOLVER_STEPS = 8


@dataclass(frozen=True)
class RunConfig:
    """Model and training settings of ``jko-flow demo`` / ``jko-flow train``.

    Step sizes are geometric: ``h_k = h0 * growth**(k-1)``, ``k = 1..num_blocks``.
    """

    block: str = "ode"
    num_blocks: int = 6
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 2
    trace: str = "auto"
    spline_layers: int = 2
    spline_hidden: int = 64
    iterations: int = 300
    batch_size: int = 512
    lr: float = 3e-3
    h0: float = 0.5
    growth: float = 1.4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block not in BLOCK_KINDS:
            raise ValueError(f"block must be one of {list(BLOCK_KINDS)}, got {self.block!r}")
        check_choice("trace", self.trace, TRACE_ESTIMATORS)
        if self.h0 <= 0 or self.growth <= 0:
            raise ValueError(f"h0 and growth must be positive, got h0={self.h0!r}, growth={self.growth!r}")

    @property
    def step_sizes(self) -> list[float]:
        return [self.h0 * self.growth**k for k in range(self.num_blocks)]


def default_config(block: str = "spline", **overrides: object) -> RunConfig:
    """The demo's tuned settings for each kind of step (see BENCHMARKS.md)."""
    if block == "spline":
        base = dict(block="spline", num_blocks=4, iterations=600, lr=3e-3, h0=0.5, growth=1.4)
    else:
        base = dict(block="ode", num_blocks=6, iterations=300, steps=2, lr=3e-3, h0=0.5, growth=1.4)
    base.update(overrides)
    return RunConfig(**base)


def build_flow(config: RunConfig, dim: int, num_blocks: int | None = None) -> nf.NormalizingFlow:
    """The untrained flow of ``config`` in dimension ``dim`` (``num_blocks`` overrides the
    config's), its weights drawn from ``config.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return make_flow(
            dim,
            config.num_blocks if num_blocks is None else num_blocks,
            block=config.block,
            **(
                dict(hidden=config.hidden, steps=config.steps, trace=config.trace)
                if config.block == "ode"
                else dict(spline_layers=config.spline_layers, spline_hidden=config.spline_hidden)
            ),
        )


@contextmanager
def ode_density(flow: nf.NormalizingFlow) -> Iterator[nf.NormalizingFlow]:
    """Score ODE blocks with the ODE's own density: at least ``NLL_SOLVER_STEPS`` RK4 steps per
    block (``solver_steps``); spline steps are exact maps and unaffected."""
    steps = max([NLL_SOLVER_STEPS] + [f.steps for f in flow.flows if isinstance(f, JKOBlock)])
    with solver_steps(flow, steps):
        yield flow


def train_flow(
    x_train: Tensor,
    x_test: Tensor | None,
    config: RunConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[nf.NormalizingFlow, TrainingHistory, float]:
    """Build the flow of ``config`` and train it block-wise; return ``(flow, history, seconds)``."""
    flow = build_flow(config, x_train.shape[1])
    trainer = JKOTrainer(
        flow,
        config.step_sizes,
        iterations=config.iterations,
        batch_size=min(config.batch_size, x_train.shape[0]),
        lr=config.lr,
        seed=config.seed,
        progress=progress,
    )
    start = time.perf_counter()
    history = trainer.fit(x_train, x_test, checkpoint_dir=checkpoint_dir, resume=resume, overwrite=not resume)
    return flow, history, time.perf_counter() - start


@torch.no_grad()
def evaluate(
    flow: nf.NormalizingFlow, x_test: Tensor, x_ref: Tensor, *, num_samples: int = 4000, seed: int = 0
) -> dict:
    """Held-out NLL, W2 from ``n`` samples to ``n`` held-out points, and the floor: W2 from ``n``
    points of ``x_ref`` (an independent data sample, e.g. training points) to the same held-out
    points, where ``n = min(num_samples, len(x_test), len(x_ref))``. Also returns the samples."""
    from .metrics import nll, wasserstein2

    flow.eval()
    n = min(num_samples, x_test.shape[0], x_ref.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        samples, _ = flow.sample(n)
    with ode_density(flow):
        test_nll = nll(flow, x_test)
    return {
        "test_nll": test_nll,
        "w2": wasserstein2(samples, x_test[:n]),
        "w2_floor": wasserstein2(x_ref[:n], x_test[:n]),
        "w2_samples": n,
        "samples": samples,
    }


def plot_samples(path: str | Path, data: Tensor, samples: Tensor, pushed: Sequence[Tensor] = ()) -> None:
    """Scatter plots of the data, the samples and the data after each block (first two coordinates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("data", data), ("samples", samples)] + [
        (f"after block {k}", p) for k, p in enumerate(pushed, 1)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-3.5, 3.5)
        ax.set_ylim(-3.5, 3.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _pushed(flow: nf.NormalizingFlow, x: Tensor) -> list[Tensor]:
    """The data after each JKO step (data side first)."""
    out, steps = [], set(map(id, jko_steps(flow)))
    for layer in reversed(flow.flows):
        x, _ = layer.inverse(x)
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
) -> dict:
    """Train, evaluate and write ``metrics.json``, ``samples.png`` and the pipeline in ``out/model``.

    Under ``torchrun`` every rank trains its shard; rank 0 alone evaluates and writes, and the
    other ranks return ``{}``."""
    from .pipeline import JKOFlowPipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flow, history, seconds = train_flow(
        x_train, x_test, config, checkpoint_dir=out / "checkpoint", resume=resume, progress=progress
    )
    if not is_main_process():  # under torchrun, rank 0 alone evaluates and writes
        return {}
    result = evaluate(flow, x_test, x_train, seed=config.seed)
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
    pipe = JKOFlowPipeline.from_normflows(flow, step_sizes=config.step_sizes[: len(history.blocks)])
    pipe.save_pretrained(out / "model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if x_test.shape[1] >= 2:
        plot_samples(out / "samples.png", x_test, samples, _pushed(flow, x_test))
    return metrics


def run_demo(
    out: str | Path = "demo_out",
    *,
    block: str = "spline",
    seed: int = 0,
    progress: bool = True,
    **overrides: object,
) -> dict:
    """Train the default JKO flow on standardised two-moons (noise 0.05) and write its report."""
    from .datasets import two_moons

    x_train = two_moons(20000, seed=seed, noise=0.05, standardize=True)
    x_test = two_moons(4000, seed=seed + 1, noise=0.05, standardize=True)
    return run_training(
        x_train, x_test, out, default_config(block, seed=seed, **overrides), progress=progress
    )
