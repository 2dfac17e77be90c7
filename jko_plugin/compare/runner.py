r"""Side by side: JKO flows against flow matching and normflows baselines, same data, same budget.

``compare(dataset, methods, budget_seconds=S)`` trains every method for the same wall-clock
budget (or ``steps=N``: the same number of gradient steps), then evaluates all of them on the same
held-out points with the same metrics, and writes ``table.md``, ``results.json`` and
``samples.png``. The command line ``jko-flow compare`` is ``compare.cli``.

Methods are the registry ``METHODS`` (``compare.methods``): ``jko`` (ODE blocks), ``jko-spline``,
``cfm``, ``otcfm``, ``realnvp`` and ``nsf`` (the default list); opt-in: ``jko-coupling``,
``jko-spline-64`` (64 bins per spline), the other Gaussian interpolants ``trig``, ``vp`` and
``vp-linear``, and the real peers ``torchcfm``, ``torchcfm-ot`` and ``flow_matching`` when
installed (``adapters.peers``); each trains within the budget, samples, scores its log-density
and counts its NFE. Budgets: with ``budget_seconds`` every method trains until its clock runs out
(a JKO flow through the trainer's ``TimeBudget`` plan, calibration included in
``train_seconds``); with ``steps`` every method takes that many gradient steps (a JKO flow
``steps // num_blocks`` per block).

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

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .._validate import positive_int
from ..datasets import MAF_DATASETS, Dataset, get_dataset, load_maf, load_samples, train_test_split
from ..datasets.files import check_columns
from ..datasets.registry import DEFAULT_TRAIN_SIZE
from ..metrics import checked_wasserstein2, mmd, nll, wasserstein2
from ..plotting import can_plot, plot_lipschitz, scatter_panels
from ..steps.normalize import Standardize
from ..training.distributed import resolve_device
from .distilled import parse_steps, regularity, trained_methods
from .methods import DEFAULT_METHODS, METHODS, Budget, TrainedModel

__all__ = ["NUM_SAMPLES", "TABLE_COLUMNS", "compare", "format_table", "in_data_units"]

#: Samples drawn (and timed) per method; the first ``w2_points`` are scored.
NUM_SAMPLES = 10_000
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
    ("fast_w2", "fast W2", "{:.4f}"),
    ("fast_nfe", "fast NFE", "{}"),
    ("lipschitz", "Lip. est.", "{:.1f}"),
    ("w2_stability", "W2 stab.", "{:.2f}"),
)
#: Columns shown only when some record has them.
_OPTIONAL_COLUMNS = ("nll_gap", "fast_w2", "fast_nfe", "lipschitz", "w2_stability", "label_accuracy")


def _fast_sampler(result: TrainedModel, num_samples: int, n: int, ref: Tensor, seed: int) -> dict:
    """W2, NFE and time of a method's fast sampler, reported beside the scored model."""
    if result.fast_sample is None:
        return {"fast_w2": None, "fast_nfe": None, "fast_sample_seconds": None}
    gen = torch.Generator().manual_seed(seed + 7)
    start = time.perf_counter()
    with torch.no_grad():
        samples = result.fast_sample(num_samples, gen)
    seconds = time.perf_counter() - start
    samples = samples[torch.isfinite(samples).all(dim=1)][:n]
    w2 = wasserstein2(samples, ref) if samples.shape[0] == n else None
    return {"fast_w2": w2, "fast_nfe": result.fast_nfe, "fast_sample_seconds": seconds}


def in_data_units(result: TrainedModel, norm: Standardize) -> TrainedModel:
    """``result``, trained on ``norm``'s standardised data, as the one map ``norm`` then model: its
    samples mapped back and its log-density ``log p(norm^-1 x) - sum(log scale)``."""

    def to_data(z: Tensor) -> Tensor:
        # A diverged model's non-finite samples stay non-finite (counted and reported as such by
        # compare) instead of failing the layer's input check and with it the whole comparison.
        out = torch.full_like(z, float("nan"))
        finite = torch.isfinite(z).all(dim=1)
        out[finite] = norm.forward(z[finite])[0]
        return out

    def sample(n: int, gen: torch.Generator) -> Tensor:
        return to_data(result.sample(n, gen))

    def fast_sample(n: int, gen: torch.Generator) -> Tensor:
        return to_data(result.fast_sample(n, gen))

    def log_prob(x: Tensor) -> Tensor:
        z, log_det = norm.inverse(x)
        return result.log_prob(z) + log_det

    # The velocity and the latent sampler stay in the model's (standardised) units: the regularity
    # diagnostics measure the model as trained.
    module = nn.ModuleDict({"norm": norm, "model": result.module})
    details = {**result.details, "standardize_log_det": -norm.log_scale_sum}
    return dataclasses.replace(
        result,
        module=module,
        sample=sample,
        log_prob=None if result.log_prob is None else log_prob,
        details=details,
        fast_sample=None if result.fast_sample is None else fast_sample,
    )


class _Scored(nn.Module):
    """``module`` (its parameters and device) with the ``log_prob`` that ``metrics.nll`` scores."""

    def __init__(self, module: nn.Module, log_prob: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.module, self._log_prob = module, log_prob

    def log_prob(self, x: Tensor) -> Tensor:
        return self._log_prob(x)


# -- data ---------------------------------------------------------------------------------------


def _load(
    dataset: str | Path, num_train: int | None, num_test: int, seed: int, maf_root: str | Path | None
) -> tuple[str, Tensor, Tensor, Dataset | None]:
    """``(name, train, held-out, registry entry or None)``; ``num_train=None``: a named dataset's
    own ``train_size``, ``DEFAULT_TRAIN_SIZE`` rows at most of a file."""
    if num_train is not None:
        positive_int("num_train", num_train, minimum=2)
    cap = DEFAULT_TRAIN_SIZE if num_train is None else num_train
    if maf_root is not None:
        if str(dataset).lower() not in MAF_DATASETS:
            raise ValueError(f"with maf_root, dataset must be one of {sorted(MAF_DATASETS)}, got {dataset!r}")
        splits = load_maf(str(dataset), maf_root)  # the standard splits; train rows kept in order
        return str(dataset).lower(), splits.train[:cap], splits.test[:num_test], None
    path = Path(str(dataset))
    if path.suffix.lower() in (".npy", ".csv"):
        data = load_samples(path)
        x_train, x_test = train_test_split(data, 0.2, seed=seed)
        return path.name, x_train[:cap], x_test[:num_test], None
    ds = get_dataset(str(dataset))  # ValueError listing the choices
    cap = ds.train_size if num_train is None else num_train
    if ds.size is not None:
        data = ds.sample(ds.size, seed=seed)
        x_train, x_test = train_test_split(data, 0.2, seed=seed)
        return ds.name, x_train[:cap], x_test[:num_test], ds
    return ds.name, ds.sample(cap, seed=seed), ds.sample(num_test, seed=seed + 1), ds


def _methods(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names:
        raise ValueError(f"methods must name at least one of {list(METHODS)}, got {methods!r}")
    for m in names:
        if m not in METHODS:
            raise ValueError(f"methods must be among {list(METHODS)}, got {m!r}")
    for m in names:  # before any training: a missing optional package is named up front
        METHODS[m].check_available()
    if len(set(names)) != len(names):
        raise ValueError(f"methods must not repeat a name, got {names}")
    return names


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- evaluation and outputs ---------------------------------------------------------------------


def format_table(records: Sequence[dict], columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> str:
    """The records as a Markdown table (``columns``: ``(key, heading, format)``, default
    ``TABLE_COLUMNS``); optional columns (``nll_gap``, fast samplers, regularity, label accuracy)
    only when some record fills them."""
    columns = [
        c for c in columns if c[0] not in _OPTIONAL_COLUMNS or any(r.get(c[0]) is not None for r in records)
    ]
    lines = ["| " + " | ".join(c[1] for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in records:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spent_words(budget_seconds: float | None, steps: int | None) -> str:
    """A comparison's budget in words, for table headers."""
    return f"{budget_seconds:g} s" if budget_seconds is not None else f"{steps} gradient steps"


def write_report(out: str | Path, header: str, table: str, results: object) -> Path:
    """``out/table.md`` (``header``, then the table) and ``out/results.json`` (``results``, e.g. the
    records); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(header + "\n\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return out


def compare(
    dataset: str | Path,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    *,
    budget_seconds: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    num_train: int | None = None,
    num_test: int = 4000,
    w2_points: int = 4000,
    num_samples: int = NUM_SAMPLES,
    maf_root: str | Path | None = None,
    standardize: bool = True,
    distill: str | Sequence[int] | None = None,
    regularity_columns: bool = False,
    verbose: bool = False,
    device: str | torch.device | None = "cpu",
    compile: bool = False,
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
            ``num_train=None``: the dataset's ``train_size`` (20,000; rose and tree 500,000, as
            JKO-iFlow trained on them), 20,000 rows at most of a file.
        w2_points: Cap of ``n`` for W2 and MMD: ``n = min(w2_points, held-out, train)``.
        num_samples: Samples drawn and timed per method (``sample_seconds``), at least ``n``.
        maf_root: With a MAF benchmark name as ``dataset`` (``power``, ``gas``, ``hepmass``,
            ``miniboone``, ``bsds300``), the local folder of the MAF data archive
            (``jko_plugin.datasets.load_maf``): trains on the first ``num_train`` rows of the
            standard training split, scores on the first ``num_test`` rows of its test split
            (raise both to use the full splits, as the published numbers do).
        standardize: Fit a ``Standardize`` on the training points and give every method the same
            standardised data; each method is then scored as ``Standardize`` followed by its model,
            so NLLs (the log-determinant included) and samples are in the data's own units.
        distill: Step counts ``K`` (``"1,2,4"`` or a sequence): each ODE method (``jko``, the
            flow-matching ones) is followed by its velocity distilled into one flow map
            (``jko_plugin.distill``, the same budget again), scored as ``method@K`` with ``K``
            network evaluations per sample (no density: ``test_nll`` is ``None``).
        regularity_columns: Add ``lipschitz`` (the largest ``||dv/dx||_2`` along the sample paths,
            normalised time; ODE methods) and ``w2_stability`` (W2 between samples of ``z`` and
            of ``z + 0.1 u`` over 0.1; every method with latents), see ``metrics.regularity``,
            with the profiles in ``details`` and the figure ``lipschitz.png``.
        verbose: Print progress and the table.
        device: Where every method trains and samples (``None``: CUDA when available); the
            metrics are computed on the CPU.
        compile: Train the JKO rows through ``torch.compile`` (``Budget.compile``).

    Returns:
        One record per method (see the module docstring for the keys). A model whose test
        log-likelihood is not finite (diverged training) gets ``test_nll = None``, and one with
        non-finite samples ``w2 = mmd = None``; ``errors`` says why, and the table shows "-".

    Raises:
        ValueError: Unknown method or dataset (the message lists the choices), a bad budget.
        FileNotFoundError: A data file that does not exist.
    """
    names = _methods(methods)
    budget = Budget(budget_seconds, steps, compile)
    device = resolve_device(device)
    distill_steps = parse_steps(distill)
    for name, v in (
        ("num_test", num_test),
        ("w2_points", w2_points),
        ("num_samples", num_samples),
    ):
        positive_int(name, v, minimum=2)
    label, x_train, x_test, ds = _load(dataset, num_train, num_test, seed, maf_root)
    dim = x_train.shape[1]
    if dim < 2:
        raise ValueError(f"compare needs data of dimension >= 2 (coupling flows), got d = {dim}")
    for name in names:
        METHODS[name].check_dim(dim)
    n = min(w2_points, x_test.shape[0], x_train.shape[0], num_samples)
    ref = x_test[:n]
    floor, floor_note = checked_wasserstein2(x_train[:n], ref, "the data-vs-data W2 floor")
    true_nll = (
        float(-ds.log_prob(x_test).double().mean()) if ds is not None and ds.log_prob is not None else None
    )
    for note in check_columns(x_train):  # refuses constant columns, warns on discrete ones
        warnings.warn(note, UserWarning, stacklevel=2)
    norm = Standardize.fit(x_train, warn=False).to(device) if standardize else None
    records, samples_by_method, profiles = [], {}, {}
    # Every method trains where its data lives, on the same (standardised) data.
    inputs = x_train.to(device), x_test.to(device)
    if norm is not None:
        with torch.no_grad():
            inputs = tuple(norm.inverse(x)[0] for x in inputs)
    trained = trained_methods(names, *inputs, budget, seed, distill_steps, verbose)
    for method, result in trained:
        if norm is not None:
            result = in_data_units(result, norm)
        result.module.eval()
        gen = torch.Generator().manual_seed(seed + 7)
        start = time.perf_counter()
        with torch.no_grad():
            samples = result.sample(num_samples, gen)
            if samples.device.type == "cuda":
                torch.cuda.synchronize(samples.device)
        sample_seconds = time.perf_counter() - start
        samples = samples.cpu()
        finite = torch.isfinite(samples).all(dim=1)
        scored = samples[finite][:n]
        errors, test_nll = [], None
        try:
            if result.log_prob is not None:  # a flow map has no density
                test_nll = nll(_Scored(result.module, result.log_prob), x_test)
        except ValueError as err:  # a diverged model: recorded as failed, not dropped
            errors.append(f"test_nll: {err}")
        if scored.shape[0] < n:
            errors.append(f"only {scored.shape[0]} of {n} scored samples are finite: no W2 / MMD")
        w2, w2_note = (
            checked_wasserstein2(scored, ref, f"{method}'s W2") if scored.shape[0] == n else (None, None)
        )
        notes = [m for m in (w2_note, floor_note if not records else None) if m]
        if verbose:
            for m in notes:
                print(f"warning: {m}", flush=True)
        known = test_nll is not None and true_nll is not None
        record = {
            "method": method,
            "dataset": label,
            "dim": dim,
            "test_nll": test_nll,
            "true_nll": true_nll,
            "nll_gap": test_nll - true_nll if known else None,
            "nll_gap_per_dim": (test_nll - true_nll) / dim if known else None,
            "w2": w2,
            "w2_floor": floor,
            "w2_points": n,
            "mmd": mmd(scored, ref) if scored.shape[0] == n else None,
            "train_seconds": result.train_seconds,
            "train_steps": result.train_steps,
            "params": _params(result.module),
            "nfe": result.nfe,
            "sample_seconds": sample_seconds,
            "num_samples": num_samples,
            "nonfinite_samples": int((~finite).sum()),
            **_fast_sampler(result, num_samples, n, ref, seed),
            "errors": errors,
            "warnings": notes,
            "budget_seconds": budget_seconds,
            "budget_steps": steps,
            "seed": seed,
            "standardized": norm is not None,
            "num_train": int(x_train.shape[0]),
            "num_test": int(x_test.shape[0]),
            "details": result.details,
        }
        if regularity_columns:
            figures = regularity(result, dim, seed)
            record.update(lipschitz=figures.pop("lipschitz"), w2_stability=figures.pop("w2_stability"))
            record["details"] = {**result.details, "regularity": figures}
            if "lipschitz_profile" in figures:
                profiles[method] = figures["lipschitz_profile"]
        records.append(record)
        samples_by_method[method] = samples[finite]
        if verbose:
            print(format_table([record]).splitlines()[-1], flush=True)
    table = format_table(records)
    if verbose:
        print(table)
    if out is not None:
        header = (
            f"{label} (d = {dim}), {x_train.shape[0]} train / {x_test.shape[0]} held-out points, "
            f"budget {spent_words(budget_seconds, steps)} per method, seed {seed}; "
            f"W2 and MMD on n = {n} points" + ("" if true_nll is None else f"; true test NLL {true_nll:.3f}")
        )
        out = write_report(out, header, table, records)
        panels = [("held-out data", x_test)] + list(samples_by_method.items())
        if can_plot():
            scatter_panels(panels, title=header.split(";")[0], max_points=2000, path=out / "samples.png")
            if profiles:
                plot_lipschitz(profiles, title=header.split(";")[0], path=out / "lipschitz.png")
    return records
