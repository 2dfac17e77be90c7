r"""``jko-flow compare``: the comparison's command-line options and their run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .methods import DEFAULT_METHODS, METHODS
from .runner import compare
from .seeds import compare_seeds

__all__ = ["add_arguments", "run"]


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
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds, e.g. 0,1,2: one run each, then the median and spread per method",
    )
    parser.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="give the methods the data as it is (default: standardised on the training split, "
        "scored in data units)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device every method trains on (default: CUDA when available, else cpu)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="train the JKO rows through torch.compile, its compilation inside their budget "
        "(the peers train as before)",
    )
    parser.add_argument("--out", default="compare_out", help="output directory")
    parser.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training points (default: 20000; rose and tree 500000, as JKO-iFlow trained on them)",
    )
    parser.add_argument("--num-test", type=int, default=4000)
    parser.add_argument(
        "--distill",
        default=None,
        help="jump counts, e.g. 1,2,4: add each ODE method's distilled flow map (method@K, NFE K)",
    )
    parser.add_argument(
        "--regularity",
        action="store_true",
        help="add the Lipschitz estimate and W2 stability columns and lipschitz.png",
    )
    parser.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional comparison on a labelled dataset (moons, 8gaussians, gmm<d>, digits): "
        "conditional NLL and class-wise W2, methods that take a context",
    )
    parser.add_argument(
        "--labels",
        type=int,
        default=None,
        help="label column of a --dataset file (implies --conditional)",
    )
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
    options = dict(
        budget_seconds=budget,
        steps=args.steps,
        out=args.out,
        num_train=args.num_train,
        num_test=args.num_test,
        maf_root=getattr(args, "maf_root", None),
        standardize=getattr(args, "standardize", True),
        distill=getattr(args, "distill", None),
        regularity_columns=getattr(args, "regularity", False),
        verbose=True,
        device=args.device,
        compile=getattr(args, "compile", False),
    )
    from ..plotting import PLOT_NOTE, can_plot

    if getattr(args, "conditional", False) or getattr(args, "labels", None) is not None:
        from ..training.distributed import resolve_device
        from .conditional import compare_conditional
        from .conditional_methods import DEFAULT_CONDITIONAL_METHODS

        extras = [
            flag
            for flag, given in (
                ("--seeds", getattr(args, "seeds", None)),
                ("--maf-root", options["maf_root"] is not None),
                ("--distill", options["distill"] is not None),
                ("--regularity", options["regularity_columns"]),
                ("--compile", options["compile"]),
            )
            if given
        ]
        if extras:
            raise ValueError(f"the conditional comparison takes one --seed and no {', '.join(extras)}")
        if args.device is not None and resolve_device(args.device).type != "cpu":
            raise ValueError(f"the conditional comparison runs on the cpu only, got --device {args.device}")
        methods = DEFAULT_CONDITIONAL_METHODS if args.methods == DEFAULT_METHODS else args.methods
        for key in ("maf_root", "distill", "regularity_columns", "device", "compile"):
            del options[key]
        compare_conditional(args.dataset, methods, labels=args.labels, seed=args.seed, **options)
        print(f"wrote {Path(args.out) / 'table.md'} and results.json")
        return 0
    if getattr(args, "seeds", None):
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError as err:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from err
        compare_seeds(args.dataset, args.methods, seeds=seeds, **options)
        print(f"wrote {Path(args.out) / 'table.md'}, results.json and one folder per seed")
    else:
        compare(args.dataset, args.methods, seed=args.seed, **options)
        figure = " and samples.png" if can_plot() else ""
        print(f"wrote {Path(args.out) / 'table.md'}, results.json{figure}")
    if not can_plot():
        print(PLOT_NOTE)
    return 0
