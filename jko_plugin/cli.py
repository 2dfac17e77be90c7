r"""The ``jko-flow`` command line: ``demo``, ``train``, ``sample``, ``compare`` and ``distill``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .steps.kinds import AUTOREGRESSIVE_MAX_DIM, DEFAULT_STEP_KIND, STEP_KINDS, default_step_kind

__all__ = ["build_parser", "main"]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    kinds = "; ".join(f"{k.name}: {k.summary}" for k in STEP_KINDS.values())
    p.add_argument(
        "--block",
        choices=sorted(STEP_KINDS),
        default=None,
        help=f"kind of JKO step (default: {DEFAULT_STEP_KIND} up to d = {AUTOREGRESSIVE_MAX_DIM}, "
        f"coupling above) - {kinds}",
    )
    p.add_argument("--blocks", type=int, default=None, help="number of JKO steps")
    p.add_argument("--iterations", type=int, default=None, help="gradient steps per block")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--h0", type=float, default=None, help="first step size h_1")
    p.add_argument("--growth", type=float, default=None, help="ratio h_{k+1} / h_k")
    p.add_argument("--solver-steps", type=int, default=None, help="RK4 steps per ODE block (default 3)")
    p.add_argument(
        "--spline-bins",
        type=int,
        default=None,
        help="bins per spline of spline steps (default: 16 in d <= 2, 8 above); "
        "64 trained detailed 2-D pictures better in minutes (BENCHMARKS.md s.4.0)",
    )
    p.add_argument(
        "--first-tail-bound",
        type=float,
        default=None,
        help="spline and coupling steps: step 1's splines act on [-B, B] with this B (the others on "
        "[-5, 5]; default 3 for spline steps on standardised data in d <= 2, else 5)",
    )
    p.add_argument(
        "--trace",
        choices=["auto", "exact", "hutchinson"],
        default=None,
        help="ODE blocks' divergence in training (auto: exact up to d = 32); from d = 4 on, "
        "hutchinson's cheaper iterations trained better at equal time (BENCHMARKS.md s.4)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="train on the data as it is (default: a Standardize layer fitted on the training split)",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="hold out 10%% of the training split; each step keeps its best iterate on it "
        "(of 10 checks) and the flow the steps up to the best NLL on it",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="train each step through torch.compile: faster iterations after a one-off "
        "compilation (tens of seconds the first time, cached on disk after)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when available, else cpu; under "
        "torchrun each process takes the GPU of its local rank)",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_device_option(p)
    p.add_argument(
        "--log-dir",
        default=None,
        help="also write TensorBoard scalars there: loss terms per iteration, diagnostics per block "
        "(needs: pip install tensorboard)",
    )


def _overrides(args: argparse.Namespace) -> dict:
    names = {
        "blocks": "num_blocks",
        "iterations": "iterations",
        "batch_size": "batch_size",
        "lr": "lr",
        "h0": "h0",
        "growth": "growth",
        "solver_steps": "steps",
        "spline_bins": "spline_bins",
        "first_tail_bound": "first_tail_bound",
        "trace": "trace",
    }
    out = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    out["standardize"] = getattr(args, "standardize", True)
    out["keep_best"] = getattr(args, "keep_best", False)
    out["compile"] = getattr(args, "compile", False)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jko-flow``."""
    parser = argparse.ArgumentParser(prog="jko-flow", description="Train, sample and compare JKO flows.")
    parser.add_argument("--version", action="version", version=f"jko-plugin {__version__}")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser(
        "demo", help="train a JKO flow on 2-D two-moons; write samples.png, metrics.json, model/"
    )
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out; replaced)")
    _add_model_options(demo)
    _add_run_options(demo)

    train = sub.add_parser("train", help="train a JKO flow on your data (.npy or .csv)")
    train.add_argument("--data", required=True, help="samples, one row per point (.npy or .csv)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint in OUT/checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT")
    train.add_argument(
        "--label-column",
        type=int,
        default=None,
        help="column of class labels (0, 1, ...; -1 the last): train a class-conditional flow on the others",
    )
    _add_model_options(train)
    _add_run_options(train)

    sample = sub.add_parser("sample", help="draw samples from a trained model")
    sample.add_argument("--model", required=True, help="a model folder (OUT/model of train or demo)")
    sample.add_argument("-n", type=int, required=True, help="number of samples")
    sample.add_argument("--out", required=True, help="output file (.npy or .csv)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument(
        "--class", dest="class_label", type=int, default=None, help="class of a class-conditional model"
    )
    _add_device_option(sample)

    distill = sub.add_parser("distill", help="distill a trained ODE model into a few-step flow map")
    distill.add_argument("--model", required=True, help="a saved model folder (OUT/model of train, or FM)")
    distill.add_argument("--out", required=True, help="output folder of the flow-map pipeline")
    distill.add_argument("--steps", default="1,2,4", help="jump counts to report (the largest is saved)")
    budget = distill.add_mutually_exclusive_group()
    budget.add_argument("--budget-seconds", type=float, default=None, help="training time (default 60)")
    budget.add_argument("--iterations", type=int, default=None, help="gradient steps instead of a time")
    distill.add_argument("--seed", type=int, default=0)

    from .compare.cli import add_arguments

    add_arguments(
        sub.add_parser("compare", help="train JKO flows and their peers side by side; table, JSON, figure")
    )
    return parser


def _print_summary(metrics: dict, out: Path) -> None:
    from .plotting import PLOT_NOTE

    print(
        f"test NLL {metrics['test_nll']:.4f} nats | W2 to held-out {metrics['w2']:.4f} "
        f"(data-vs-data floor {metrics['w2_floor']:.4f}) | training {metrics['train_seconds']:.1f} s"
    )
    for line in metrics.get("warnings", []):  # only figures shown above that are actually off
        print(f"warning: {line}", file=sys.stderr)
    written = ["metrics.json", *metrics.get("figures", []), "model"]
    print("wrote " + ", ".join(str(out / f) for f in written))
    if not metrics.get("figures"):
        print(PLOT_NOTE)


def _demo(args: argparse.Namespace) -> int:
    from .workflows import run_demo

    out = Path(args.out)
    metrics = run_demo(
        out,
        block=args.block or default_step_kind(2),
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
        log_dir=args.log_dir,
        **_overrides(args),
    )
    if metrics:  # empty on torchrun ranks other than 0
        _print_summary(metrics, out)
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from .datasets import load_samples, split_labels, train_test_split
    from .datasets.files import check_columns, describe_scale
    from .training.options import TrainingDiverged
    from .workflows import default_config, run_training

    out = Path(args.out)
    if (out / "checkpoint").exists() and not (args.resume or args.overwrite):
        print(f"error: {out} holds an earlier run; pass --resume or --overwrite", file=sys.stderr)
        return 2
    x = load_samples(args.data)
    x_train, x_test = train_test_split(x, args.test_fraction, seed=args.seed)
    labels: dict = {}
    conditional: dict = {}
    if args.label_column is not None:  # split with the samples, then separated
        (x_train, y_train), (x_test, y_test) = (split_labels(p, args.label_column) for p in (x_train, x_test))
        labels = {"context": y_train, "context_test": y_test}
        conditional = {"num_classes": int(max(y_train.max(), y_test.max())) + 1}
    x = torch.cat([x_train, x_test])  # the sample columns (without the labels)
    notes = check_columns(x)  # refuses a constant column before anything is trained
    block = args.block or default_step_kind(x_train.shape[1])
    config = default_config(block, seed=args.seed, **_overrides(args), **conditional)
    if not config.standardize:  # otherwise Standardize.fit gives the same advice
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    try:
        metrics = run_training(
            x_train,
            x_test,
            out,
            config,
            resume=args.resume,
            progress=not args.quiet,
            device=args.device,
            log_dir=args.log_dir,
            **labels,
        )
    except TrainingDiverged as err:
        advice = (
            "train without --no-standardize (a Standardize layer fitted on the training split)"
            if not config.standardize
            else "lower --lr or use more solver steps"
        )
        print(
            f"error: {err}. The data's scale may be the cause ({describe_scale(x)}): the model "
            f"expects roughly unit scale; {advice}",
            file=sys.stderr,
        )
        return 1
    if metrics:  # empty on torchrun ranks other than 0
        _print_summary(metrics, out)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .sampling.pipeline import JKOFlowPipeline
    from .training.distributed import resolve_device

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):
        print(f"error: --out must end in .npy or .csv, got {out.name!r}", file=sys.stderr)
        return 2
    if args.n < 1:
        print(f"error: -n must be a positive integer, got {args.n}", file=sys.stderr)
        return 2
    if not Path(args.model).is_dir():
        print(
            f"error: --model {args.model}: no such folder (give a model folder written by train or "
            "demo, OUT/model)",
            file=sys.stderr,
        )
        return 2
    device = resolve_device(args.device)
    pipe = JKOFlowPipeline.from_pretrained(args.model).to(device)
    conditioning = getattr(pipe.model, "conditioning", {})
    classes = conditioning.get("num_classes")
    if args.class_label is None and conditioning:
        raise ValueError(f"{args.model} holds a conditional model ({conditioning}): pass --class")
    if args.class_label is not None and classes is None:
        raise ValueError(f"{args.model} holds a model without class labels: drop --class")
    if args.class_label is not None and not 0 <= args.class_label < classes:
        raise ValueError(f"--class must lie in [0, {classes - 1}] for this model, got {args.class_label}")
    samples = pipe(
        batch_size=args.n,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
        class_labels=args.class_label,
    ).samples
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples)
    else:
        np.savetxt(out, samples, delimiter=",")
    print(json.dumps({"samples": int(samples.shape[0]), "dim": int(samples.shape[1]), "out": str(out)}))
    return 0


def _distill(args: argparse.Namespace) -> int:
    from .compare.distilled import parse_steps
    from .distill import distill_flow_map, load_teacher, save_flow_map, teacher_gap

    steps = parse_steps(args.steps)
    if not steps:
        raise ValueError(f"--steps must list at least one jump count, got {args.steps!r}")
    seconds = 60.0 if args.budget_seconds is None and args.iterations is None else args.budget_seconds
    teacher = load_teacher(args.model)
    model, history = distill_flow_map(teacher, steps=args.iterations, budget_seconds=seconds, seed=args.seed)
    save_flow_map(model, args.out, num_inference_steps=max(steps))
    gaps = teacher_gap(model, teacher, steps, seed=args.seed)
    report = {
        "out": str(args.out),
        "train_seconds": history.seconds,
        "train_steps": history.steps,
        "rms_to_teacher": {str(k): gap for k, gap in gaps.items()},
    }
    (Path(args.out) / "distill.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jko-flow``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .compare.cli import run as _compare

    commands = {"demo": _demo, "train": _train, "sample": _sample, "compare": _compare, "distill": _distill}
    if args.command not in commands:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return commands[args.command](args)
    except (ValueError, OSError, ImportError) as err:  # OSError: unreadable files; ImportError: extras
        print(f"error: {err}", file=sys.stderr)
        return 2


def _one_line_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    # A command-line user reads the advice, not the file and line that raised it.
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
