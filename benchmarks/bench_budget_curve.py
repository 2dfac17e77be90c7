"""Test NLL against the training budget for several methods on one dataset: one figure, one JSON.

Every point is one `compare` run (same data, same seed) at a wall-clock budget; the curve shows
which method is best at each budget, not only at the one the tables use.

    flock /tmp/bench.lock python benchmarks/bench_budget_curve.py --dataset moons --budgets 15 30 60 120
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jko_plugin.compare import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="moons")
    parser.add_argument("--methods", default="jko,jko-spline,jko-coupling,cfm,nsf")
    parser.add_argument("--budgets", type=float, nargs="+", default=[15.0, 30.0, 60.0, 120.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/budget_curve")
    parser.add_argument("--plot", type=Path, help="only redraw the figure of this curve JSON")
    args = parser.parse_args()
    if args.plot:
        return plot(args.plot)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list] = {}
    true_nll = None
    for budget in args.budgets:
        records = compare(args.dataset, args.methods, budget_seconds=budget, seed=args.seed, verbose=False)
        for r in records:
            curves.setdefault(r["method"], []).append(
                {
                    "budget": budget,
                    "test_nll": r["test_nll"],
                    "w2": r["w2"],
                    "train_seconds": r["train_seconds"],
                    "train_steps": r["train_steps"],
                }
            )
            true_nll = r["true_nll"]
        print(
            f"{budget:6.0f} s: " + "  ".join(f"{r['method']} {r['test_nll']:.3f}" for r in records),
            flush=True,
        )
    methods = list(curves)
    print("\n| budget | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for i, budget in enumerate(args.budgets):
        cells = [curves[m][i]["test_nll"] for m in methods]
        best = min((c for c in cells if c is not None), default=None)
        text = ["-" if c is None else (f"**{c:.3f}**" if c == best else f"{c:.3f}") for c in cells]
        print(f"| {budget:.0f} s | " + " | ".join(text) + " |")
    (out / f"{args.dataset}.json").write_text(
        json.dumps(
            {"dataset": args.dataset, "seed": args.seed, "true_nll": true_nll, "curves": curves}, indent=1
        )
    )
    plot(out / f"{args.dataset}.json")


def plot(path: Path) -> None:
    """Draw the figure of a curve's JSON beside it (``--plot JSON`` redraws one without training)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    run = json.loads(path.read_text())
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    budgets = sorted({p["budget"] for points in run["curves"].values() for p in points})
    for method, points in run["curves"].items():
        ok = [p for p in points if p["test_nll"] is not None]
        ax.plot([p["budget"] for p in ok], [p["test_nll"] for p in ok], marker="o", label=method)
    if run["true_nll"] is not None:
        ax.axhline(run["true_nll"], color="k", lw=0.8, ls="--", label="true NLL")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training budget per method (s)")
    ax.set_ylabel("test NLL (nats)")
    ax.set_title(f"{run['dataset']}, seed {run['seed']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    print(f"wrote {path} and {path.with_suffix('.png')}")

if __name__ == "__main__":
    main()
