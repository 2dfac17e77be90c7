r"""Side by side: JKO flows against flow matching and normflows baselines, same data, same budget.

``compare(dataset, methods, budget_seconds=S)`` trains every method for the same wall-clock
budget (or ``steps=N``: the same number of gradient steps), then evaluates all of them on the same
held-out points with the same metrics, and writes ``table.md``, ``results.json`` and
``samples.png``. The command line ``jko-flow compare`` (or ``python -m jko_plugin.compare``) is
``add_arguments`` + ``run``.

Methods (``METHODS``):

- ``jko``: JKO flow of ODE blocks (``default_config("ode")``: 6 blocks, 2 RK4 steps each),
  trained with the exact divergence up to d = 3 and Hutchinson's estimate above (evaluated
  exactly either way);
- ``jko-spline``: JKO flow of spline steps (``default_config("spline")``: 4 steps of 2 layers);
- ``cfm``: flow matching, linear path, independent coupling (I-CFM / rectified flow);
- ``otcfm``: flow matching with exact minibatch OT coupling (OT-CFM);
- ``realnvp``, ``nsf``: normflows' RealNVP and neural spline flow, maximum likelihood.

Budgets. With ``budget_seconds`` the peers train until the clock runs out. A JKO flow trains a
number of iterations per block, so ``compare`` first times, on a throwaway one-block flow, a few
training iterations and the per-block overhead (pushing the data through it), then before each
block sets its iterations so that the blocks left share the time left (re-measuring the cost per iteration on
the blocks trained so far), and reports the real time, calibration included, as
``train_seconds``. With ``steps``, every method takes that many gradient steps; a
JKO flow takes ``steps // num_blocks`` per block (``steps`` in all).

Metrics, all on the same held-out points: ``test_nll`` (exact: change of variables, or the
exact-divergence ODE for flow matching with 64 RK4 steps); ``w2`` from ``n`` model samples to
``n`` held-out points and ``w2_floor`` from ``n`` training points to the same held-out points
(``n = min(4000, held-out)``, same Sinkhorn settings); ``mmd`` (Gaussian kernels, median
heuristic) on the same points; ``nfe`` network evaluations per sample when sampling;
``sample_seconds`` to draw 10,000 samples; ``params``; and where the density is known
(moons, checkerboard, 8gaussians, ``gmm<d>``) ``true_nll`` and ``nll_gap = test_nll - true_nll``
(also per dimension).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .datasets import MAF_DATASETS, Dataset, get_dataset, load_maf, load_samples, train_test_split
from .metrics import mmd, nll, wasserstein2
from .trainer import JKOTrainer, TrainerOptions
from .workflows import NLL_SOLVER_STEPS, RunConfig, build_flow, default_config, ode_density

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MethodResult",
    "TABLE_COLUMNS",
    "add_arguments",
    "compare",
    "format_table",
    "main",
    "run",
]

METHODS = ("jko", "jko-spline", "cfm", "otcfm", "realnvp", "nsf")
DEFAULT_METHODS = ",".join(METHODS)
#: Samples drawn (and timed) per method; the first ``w2_points`` are scored.
NUM_SAMPLES = 10_000
#: Solver of flow-matching sampling: 12 RK4 steps, 48 evaluations, as many as the default JKO flow.
FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER = 12, "rk4"
#: Solver of flow-matching likelihoods (exact divergence).
FM_NLL_STEPS = 64
#: Learning rate of the peers (Adam, cosine decay over the budget).
PEER_LR = 1e-3
BATCH_SIZE = 512
TABLE_COLUMNS = (
    ("method", "method", "{}"),
    ("test_nll", "test NLL", "{:.3f}"),
    ("nll_gap", "gap to true", "{:+.3f}"),
    ("w2", "W2", "{:.4f}"),
    ("w2_floor", "W2 floor", "{:.4f}"),
    ("mmd", "MMD^2", "{:.2e}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("train_steps", "grad steps", "{}"),
    ("params", "params", "{}"),
    ("nfe", "NFE", "{}"),
    ("sample_seconds", "10k samples s", "{:.2f}"),
)


@dataclass
class MethodResult:
    """A trained model and what its training did."""

    model: nn.Module
    sample: Callable[[int, torch.Generator], Tensor]
    train_seconds: float
    train_steps: int
    nfe: int
    details: dict


# -- training -----------------------------------------------------------------------------------


def _jko_config(method: str, dim: int, seed: int) -> RunConfig:
    if method == "jko":
        # From d = 4 on, Hutchinson's cheaper iterations won at equal time (BENCHMARKS.md s.4).
        return default_config("ode", seed=seed, trace="exact" if dim <= 3 else "hutchinson")
    return default_config("spline", seed=seed)


class _LogProb(nn.Module):
    """``model`` (its parameters counted) with the ``log_prob`` that ``metrics.nll`` should score."""

    def __init__(self, model: nn.Module, log_prob: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self._log_prob = model, log_prob

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(x)


def _ode_log_prob(flow: nn.Module, x: Tensor) -> Tensor:
    with ode_density(flow):
        return flow.log_prob(x)


def _trainer(
    config: RunConfig, flow: nn.Module, x: Tensor, iterations: int, step_sizes: list[float]
) -> JKOTrainer:
    return JKOTrainer(
        flow,
        step_sizes,
        iterations=iterations,
        batch_size=min(config.batch_size, x.shape[0]),
        lr=config.lr,
        seed=config.seed,
        progress=False,
    )


def _calibrate(config: RunConfig, x: Tensor, x_val: Tensor) -> tuple[float, float, float]:
    """``(seconds per iteration, overhead per block, overhead per fit)``, measured on a throwaway
    one-block flow: training iterations as ``JKOTrainer`` runs them (transport, JKO loss,
    backward, Adam), the block's pass over the training and held-out data, and the fit's entropy
    estimate. Timing the parts apart keeps the per-iteration cost from drowning in the overhead."""
    from .history import knn_entropy

    flow = build_flow(config, x.shape[1], 1)
    step = flow.flows[0]
    h = config.step_sizes[0]
    opt = torch.optim.Adam(step.parameters(), lr=config.lr)
    batch = x[: min(config.batch_size, x.shape[0])]
    step.train()
    times = []
    for _ in range(8):
        t0 = time.perf_counter()
        out = step.transport(batch)
        loss = (0.5 * out.z.square().sum(-1) - out.log_det + out.sq_displacement / (2 * h)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    per_iter = sorted(times[2:])[len(times[2:]) // 2]  # median after two warm-up iterations
    step.eval()
    opts = TrainerOptions()  # the chunk and evaluation sizes _trainer's JKOTrainer uses
    t0 = time.perf_counter()
    with torch.no_grad():
        for chunk in x.split(opts.chunk_size):  # as JKOTrainer._push: points, then log-dets of a subset
            step.transport(chunk, log_det=False)
        step.inverse(x[: opts.eval_size])
        val = x_val[: opts.eval_size]
        z, _ = step.inverse(val)
        step.forward(z)
        step.inverse(val)
    per_block = time.perf_counter() - t0
    t0 = time.perf_counter()
    knn_entropy(val)
    return per_iter, per_block, time.perf_counter() - t0


class _BudgetKeeper:
    """Sets each block's iterations from the time left, re-measuring the cost per iteration on
    the blocks trained so far (``JKOTrainer`` reads ``options.iterations`` at each block)."""

    def __init__(
        self, trainer: JKOTrainer, budget: float, start: float, per_iter: float, overhead: float, blocks: int
    ) -> None:
        self.trainer, self.budget, self.start = trainer, budget, start
        self.per_iter, self.overhead, self.blocks = per_iter, overhead, blocks
        self.iterations: list[int] = []
        self._costs: list[float] = []

    def next_iterations(self) -> int:
        left = self.budget - (time.perf_counter() - self.start)
        per_block = left / max(self.blocks - len(self.iterations), 1)
        return max(1, int((per_block - self.overhead) / self.per_iter))

    def set_next(self) -> None:
        its = self.next_iterations()
        self.iterations.append(its)
        self.trainer.options = dataclasses.replace(self.trainer.options, iterations=its)

    def __call__(self, record: object) -> None:
        its = self.iterations[-1]
        self._costs.append(max(record.seconds - self.overhead, 1e-6) / its)
        self.per_iter = sum(self._costs) / len(self._costs)
        if len(self.iterations) < self.blocks:
            self.set_next()


def _train_jko(
    method: str, x: Tensor, x_val: Tensor, budget_seconds: float | None, steps: int | None, seed: int
) -> MethodResult:
    from .adapters.normflows_baselines import sample_flow

    config = _jko_config(method, x.shape[1], seed)
    flow = build_flow(config, x.shape[1])
    details: dict = {"num_blocks": config.num_blocks, "step_sizes": config.step_sizes}
    if config.block == "ode":
        details["trace"] = config.trace
    start = time.perf_counter()
    if steps is not None:
        iterations = max(1, steps // config.num_blocks)
        history = _trainer(config, flow, x, iterations, config.step_sizes).fit(x, x_val)
        per_block = [iterations] * config.num_blocks
    else:
        per_iter, overhead, fit_overhead = _calibrate(config, x, x_val)
        details.update(
            calibration_seconds=time.perf_counter() - start,
            calibrated_seconds_per_iteration=per_iter,
            block_overhead_seconds=overhead,
            fit_overhead_seconds=fit_overhead,
        )
        trainer = _trainer(config, flow, x, 1, config.step_sizes)
        keeper = _BudgetKeeper(
            trainer, budget_seconds - fit_overhead, start, per_iter, overhead, config.num_blocks
        )
        keeper.set_next()
        history = trainer.fit(x, x_val, callback=keeper)
        per_block = keeper.iterations
    seconds = time.perf_counter() - start
    if config.block == "ode":
        nfe = config.num_blocks * config.steps * 4  # RK4: 4 stages per step
    else:
        nfe = config.num_blocks * config.spline_layers * x.shape[1]  # autoregressive inverse: d passes
    details.update(iterations_per_block=per_block, block_nll=[b.nll for b in history.blocks])
    model: nn.Module = flow
    if config.block == "ode":
        # Scored with the ODE's own density, as flow matching is (trained and sampled with fewer steps).
        details["nll_solver"] = f"{NLL_SOLVER_STEPS} x {config.num_blocks} x rk4"
        model = _LogProb(flow, lambda xb: _ode_log_prob(flow, xb))
    return MethodResult(
        model, lambda n, gen: sample_flow(flow, n, generator=gen), seconds, sum(per_block), nfe, details
    )


def _train_fm(
    method: str, x: Tensor, budget_seconds: float | None, steps: int | None, seed: int
) -> MethodResult:
    from .adapters.external import nfe as solver_nfe
    from .adapters.flow_matching import FlowMatchingModel, fit_flow_matching

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FlowMatchingModel(x.shape[1])
    history = fit_flow_matching(
        model,
        x,
        coupling="ot" if method == "otcfm" else "independent",
        steps=steps,
        budget_seconds=budget_seconds,
        batch_size=min(BATCH_SIZE, x.shape[0]),
        lr=PEER_LR,
        seed=seed,
    )

    def sample(n: int, gen: torch.Generator) -> Tensor:
        return model.sample(n, steps=FM_SAMPLE_STEPS, solver=FM_SAMPLE_SOLVER, generator=gen)

    return MethodResult(
        _LogProb(model, lambda xb: model.log_prob(xb, steps=FM_NLL_STEPS, solver="rk4")),
        sample,
        history.seconds,
        history.steps,
        solver_nfe(FM_SAMPLE_STEPS, FM_SAMPLE_SOLVER),
        {"sample_solver": f"{FM_SAMPLE_STEPS} x {FM_SAMPLE_SOLVER}", "nll_solver": f"{FM_NLL_STEPS} x rk4"},
    )


def _train_baseline(
    method: str, x: Tensor, budget_seconds: float | None, steps: int | None, seed: int
) -> MethodResult:
    from .adapters.normflows_baselines import fit_maximum_likelihood, make_baseline, sample_flow

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        flow = make_baseline(method, x.shape[1])
    history = fit_maximum_likelihood(
        flow,
        x,
        steps=steps,
        budget_seconds=budget_seconds,
        batch_size=min(BATCH_SIZE, x.shape[0]),
        lr=PEER_LR,
        seed=seed,
    )
    layers = sum(
        1 for f in flow.flows if not isinstance(f, (torch.nn.Identity,)) and "Permute" not in type(f).__name__
    )
    nfe = layers * (x.shape[1] if method == "nsf" else 1)  # autoregressive inverse: d passes per layer
    return MethodResult(
        flow, lambda n, gen: sample_flow(flow, n, generator=gen), history.seconds, history.steps, nfe, {}
    )


def _train(
    method: str, x: Tensor, x_val: Tensor, budget_seconds: float | None, steps: int | None, seed: int
) -> MethodResult:
    if method in ("jko", "jko-spline"):
        return _train_jko(method, x, x_val, budget_seconds, steps, seed)
    if method in ("cfm", "otcfm"):
        return _train_fm(method, x, budget_seconds, steps, seed)
    return _train_baseline(method, x, budget_seconds, steps, seed)


# -- data ---------------------------------------------------------------------------------------


def _load(
    dataset: str | Path, num_train: int, num_test: int, seed: int, maf_root: str | Path | None
) -> tuple[str, Tensor, Tensor, Dataset | None]:
    """``(name, train, held-out, registry entry or None)``."""
    if maf_root is not None:
        if str(dataset).lower() not in MAF_DATASETS:
            raise ValueError(f"with maf_root, dataset must be one of {sorted(MAF_DATASETS)}, got {dataset!r}")
        splits = load_maf(str(dataset), maf_root)  # the standard splits; train rows kept in order
        return str(dataset).lower(), splits.train[:num_train], splits.test[:num_test], None
    path = Path(str(dataset))
    if path.suffix.lower() in (".npy", ".csv"):
        data = load_samples(path)
        x_train, x_test = train_test_split(data, 0.2, seed=seed)
        return path.name, x_train[:num_train], x_test[:num_test], None
    ds = get_dataset(str(dataset))  # ValueError listing the choices
    if ds.size is not None:
        data = ds.sample(ds.size, seed=seed)
        x_train, x_test = train_test_split(data, 0.2, seed=seed)
        return ds.name, x_train[:num_train], x_test[:num_test], ds
    return ds.name, ds.sample(num_train, seed=seed), ds.sample(num_test, seed=seed + 1), ds


def _methods(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise ValueError(f"methods must name at least one of {list(METHODS)}, got {methods!r}")
    for m in names:
        if m not in METHODS:
            raise ValueError(f"methods must be among {list(METHODS)}, got {m!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"methods must not repeat a name, got {names}")
    return names


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- evaluation and outputs ---------------------------------------------------------------------


def format_table(records: Sequence[dict]) -> str:
    """The records as a Markdown table (columns ``TABLE_COLUMNS``; ``nll_gap`` only when known)."""
    has_gap = any(r.get("nll_gap") is not None for r in records)
    columns = [c for c in TABLE_COLUMNS if c[0] != "nll_gap" or has_gap]
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in records:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(path: Path, x_test: Tensor, samples: dict[str, Tensor], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out data", x_test)] + list(samples.items())
    ref = x_test[:, :2]
    lo = (ref.quantile(0.005, dim=0) - 0.5).tolist()
    hi = (ref.quantile(0.995, dim=0) + 0.5).tolist()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (name, pts) in zip(axes[0], panels):
        pts = pts[:2000].detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(
    dataset: str | Path,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    *,
    budget_seconds: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    num_train: int = 20000,
    num_test: int = 4000,
    w2_points: int = 4000,
    num_samples: int = NUM_SAMPLES,
    maf_root: str | Path | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Train ``methods`` on ``dataset`` with one budget and evaluate them on the same held-out points.

    Args:
        dataset: A name known to ``jko_plugin.datasets.get_dataset`` (``moons``, ``checkerboard``,
            ``gmm16``, ``digits``, ...) or a path to a ``.npy`` / ``.csv`` file of samples
            ``(n, d)``, split 80/20 into train and held-out points. Fixed-size datasets (digits)
            are split 80/20 too.
        methods: Comma-separated names or a sequence, among ``METHODS``.
        budget_seconds: Wall-clock training budget per method.
        steps: Gradient steps per method (for a JKO flow, the total over its blocks). Exactly
            one of ``budget_seconds`` and ``steps``. With ``steps`` the results depend only on
            ``seed`` (timings aside).
        seed: Seeds the data, the initial weights, the batches and the samples.
        out: Directory for ``table.md``, ``results.json`` and ``samples.png`` (``None``: none).
        num_train, num_test: Training and held-out points (caps for files and fixed-size data).
        w2_points: Cap of ``n`` for W2 and MMD: ``n = min(w2_points, held-out, train)``.
        num_samples: Samples drawn and timed per method (``sample_seconds``), at least ``n``.
        maf_root: With a MAF benchmark name as ``dataset`` (``power``, ``gas``, ``hepmass``,
            ``miniboone``, ``bsds300``), the local folder of the MAF data archive
            (``jko_plugin.datasets.load_maf``): trains on the first ``num_train`` rows of the
            standard training split, scores on the first ``num_test`` rows of its test split
            (raise both to use the full splits, as the published numbers do).
        verbose: Print progress and the table.

    Returns:
        One record per method (see the module docstring for the keys). A model whose test
        log-likelihood is not finite (diverged training) gets ``test_nll = None``, and one with
        non-finite samples ``w2 = mmd = None``; ``errors`` says why, and the table shows "-".

    Raises:
        ValueError: Unknown method or dataset (the message lists the choices), a bad budget.
        FileNotFoundError: A data file that does not exist.
    """
    names = _methods(methods)
    if (budget_seconds is None) == (steps is None):
        raise ValueError(
            "give exactly one of budget_seconds and steps, "
            f"got budget_seconds={budget_seconds!r}, steps={steps!r}"
        )
    if budget_seconds is not None and not (isinstance(budget_seconds, (int, float)) and budget_seconds > 0):
        raise ValueError(f"budget_seconds must be a positive number, got {budget_seconds!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    for name, v in (
        ("num_train", num_train),
        ("num_test", num_test),
        ("w2_points", w2_points),
        ("num_samples", num_samples),
    ):
        if not isinstance(v, int) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    label, x_train, x_test, ds = _load(dataset, num_train, num_test, seed, maf_root)
    dim = x_train.shape[1]
    if dim < 2:
        raise ValueError(f"compare needs data of dimension >= 2 (coupling flows), got d = {dim}")
    n = min(w2_points, x_test.shape[0], x_train.shape[0], num_samples)
    ref = x_test[:n]
    floor = wasserstein2(x_train[:n], ref)
    true_nll = (
        float(-ds.log_prob(x_test).double().mean()) if ds is not None and ds.log_prob is not None else None
    )
    records, samples_by_method = [], {}
    for method in names:
        if verbose:
            print(f"[{label}] training {method} ...", flush=True)
        torch.manual_seed(seed)
        result = _train(method, x_train, x_test, budget_seconds, steps, seed)
        result.model.eval()
        gen = torch.Generator().manual_seed(seed + 7)
        start = time.perf_counter()
        with torch.no_grad():
            samples = result.sample(num_samples, gen)
        sample_seconds = time.perf_counter() - start
        finite = torch.isfinite(samples).all(dim=1)
        scored = samples[finite][:n]
        errors = []
        try:
            test_nll = nll(result.model, x_test)
        except ValueError as err:  # a diverged model: recorded as failed, not dropped
            test_nll = None
            errors.append(f"test_nll: {err}")
        if scored.shape[0] < n:
            errors.append(f"only {scored.shape[0]} of {n} scored samples are finite: no W2 / MMD")
        known = test_nll is not None and true_nll is not None
        record = {
            "method": method,
            "dataset": label,
            "dim": dim,
            "test_nll": test_nll,
            "true_nll": true_nll,
            "nll_gap": test_nll - true_nll if known else None,
            "nll_gap_per_dim": (test_nll - true_nll) / dim if known else None,
            "w2": wasserstein2(scored, ref) if scored.shape[0] == n else None,
            "w2_floor": floor,
            "w2_points": n,
            "mmd": mmd(scored, ref) if scored.shape[0] == n else None,
            "train_seconds": result.train_seconds,
            "train_steps": result.train_steps,
            "params": _params(result.model),
            "nfe": result.nfe,
            "sample_seconds": sample_seconds,
            "num_samples": num_samples,
            "nonfinite_samples": int((~finite).sum()),
            "errors": errors,
            "budget_seconds": budget_seconds,
            "budget_steps": steps,
            "seed": seed,
            "num_train": int(x_train.shape[0]),
            "num_test": int(x_test.shape[0]),
            "details": result.details,
        }
        records.append(record)
        samples_by_method[method] = samples[finite]
        if verbose:
            print(format_table([record]).splitlines()[-1], flush=True)
    table = format_table(records)
    if verbose:
        print(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        budget = f"{budget_seconds:g} s" if budget_seconds is not None else f"{steps} gradient steps"
        header = (
            f"{label} (d = {dim}), {x_train.shape[0]} train / {x_test.shape[0]} held-out points, "
            f"budget {budget} per method, seed {seed}; W2 and MMD on n = {n} points"
            + ("" if true_nll is None else f"; true test NLL {true_nll:.3f}")
        )
        (out / "table.md").write_text(header + "\n\n" + table + "\n")
        (out / "results.json").write_text(json.dumps(records, indent=1))
        _plot(out / "samples.png", x_test, samples_by_method, header.split(";")[0])
    return records


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of ``jko-flow compare`` to ``parser`` and return it."""
    parser.add_argument(
        "--dataset",
        default="moons",
        help="dataset name (moons, checkerboard, gmm16, digits, ...) or a .npy/.csv file",
    )
    parser.add_argument(
        "--methods", default=DEFAULT_METHODS, help=f"comma-separated, among {','.join(METHODS)}"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="wall-clock training budget per method (default 60)",
    )
    budget.add_argument(
        "--steps", type=int, default=None, help="gradient steps per method instead of a time budget"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="compare_out", help="output directory")
    parser.add_argument("--num-train", type=int, default=20000)
    parser.add_argument("--num-test", type=int, default=4000)
    parser.add_argument(
        "--maf-root",
        default=None,
        help="folder of the MAF data archive; then --dataset is power, gas, hepmass, miniboone or bsds300",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``compare`` from parsed ``add_arguments`` options; print the table; return 0."""
    budget = args.budget_seconds
    if budget is None and args.steps is None:
        budget = 60.0
    compare(
        args.dataset,
        args.methods,
        budget_seconds=budget,
        steps=args.steps,
        seed=args.seed,
        out=args.out,
        num_train=args.num_train,
        num_test=args.num_test,
        maf_root=getattr(args, "maf_root", None),
        verbose=True,
    )
    print(f"wrote {Path(args.out) / 'table.md'}, results.json and samples.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jko_plugin.compare [options]``."""
    parser = add_arguments(
        argparse.ArgumentParser(prog="jko-flow compare", description=__doc__.splitlines()[0])
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
