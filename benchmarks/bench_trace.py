"""Exact divergence against Hutchinson's estimate for training ODE JKO blocks, at equal time.

Trains `jko-flow compare`'s `jko` method (6 ODE blocks, `default_config("ode")`) on the Gaussian
mixtures gmm<d> for the same wall-clock budget with `trace="exact"` and `trace="hutchinson"`
(one Rademacher probe), and scores both with the exact test NLL. This is the measurement behind
compare's choice of Hutchinson from d = 4. Prints a table and writes JSON.

    OMP_NUM_THREADS=1 flock /tmp/jko-bench.lock python benchmarks/bench_trace.py
    (options: --dims 4 8 16, --budget 30, --seed 1, --out benchmarks/results/trace.json)
"""

import argparse
import json
import platform
from pathlib import Path
from unittest import mock

import torch

from jko_plugin.compare import METHODS, compare
from jko_plugin.workflows import default_config


def run(dim: int, trace: str, budget: float, seed: int) -> dict:
    config = default_config("ode", seed=seed, trace=trace)
    with mock.patch.object(METHODS["jko"], "config", lambda d, s: config):
        (rec,) = compare(
            f"gmm{dim}", "jko", budget_seconds=budget, seed=seed, w2_points=2000, num_samples=2000
        )
    return {
        "dim": dim,
        "trace": trace,
        "test_nll": rec["test_nll"],
        "true_nll": rec["true_nll"],
        "w2": rec["w2"],
        "iterations": rec["train_steps"],
        "train_seconds": rec["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/trace.json")
    args = parser.parse_args()
    rows = [run(d, t, args.budget, args.seed) for d in args.dims for t in ("exact", "hutchinson")]
    print(f"budget {args.budget:g} s per run, seed {args.seed}, threads {torch.get_num_threads()}")
    print(f"{'d':>3} {'trace':>10} {'test NLL':>9} {'true NLL':>9} {'W2':>7} {'iters':>6} {'train s':>7}")
    for r in rows:
        print(
            f"{r['dim']:>3} {r['trace']:>10} {r['test_nll']:>9.3f} {r['true_nll']:>9.3f} "
            f"{r['w2']:>7.4f} {r['iterations']:>6} {r['train_seconds']:>7.1f}"
        )
    meta = {"budget_seconds": args.budget, "seed": args.seed, "threads": torch.get_num_threads()}
    meta["machine"] = platform.platform()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
