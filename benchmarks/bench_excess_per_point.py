"""Where a model's excess NLL lies: per-point ``log p_true - log q`` on validation, test and train points.

Trains one recipe-harness variant (``bench_jko_recipes.run``) and prints quantiles of the per-point
excess, the share of the mean that the worst points carry, and the mean without the worst 1%: a
few outliers (tails) and a density that is wrong everywhere by a little (roughness) call for
different fixes. Run from ``benchmarks/``:

    flock /tmp/bench.lock python bench_excess_per_point.py gmm16 jko-compiled-steps3 --budget 120
"""

from __future__ import annotations

import argparse

import torch

import bench_jko_recipes as recipes
from jko_plugin.datasets import get_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, required=True)
    args = parser.parse_args()
    truth = get_dataset(args.dataset).log_prob
    excess = []

    def nll(flow, x):  # the harness scores validation, test, then train points, in that order
        log_q = flow.log_prob(x).double()
        excess.append(truth(x).double() - log_q)
        return float(-log_q.mean())

    recipes.nll = nll
    torch.set_num_threads(2)
    row = recipes.run(args.dataset, args.variant, args.seed, args.budget)
    print({k: row[k] for k in recipes.LOG_KEYS})
    levels = torch.tensor([0.01, 0.1, 0.5, 0.9, 0.99], dtype=torch.float64)
    for name, d in zip(("val", "test", "train"), excess):
        worst = d.sort(descending=True).values
        top = len(d) // 100
        print(
            f"{name}: mean {d.mean():.3f}, quantiles (1/10/50/90/99%) "
            f"{[round(float(v), 3) for v in torch.quantile(d, levels)]}, "
            f"worst 1% carry {worst[:top].sum() / d.sum():.3f} of the sum, "
            f"mean without them {worst[top:].mean():.3f}, max {worst[0]:.2f}"
        )


if __name__ == "__main__":
    main()
