"""Times the training of `jko-flow demo` and reports W2 to held-out data, next to the references.

For each kind of JKO step (ode, spline) and each seed: train the demo's default flow on 20000
standardised two-moons points (noise 0.05), draw 4000 samples, and compute W2 (jko_plugin.metrics,
debiased Sinkhorn, in data units) to 4000 held-out points; alongside, the W2 between two
independent 4000-point data samples (the floor) and between 4000 N(0, I) points and the data.
Prints a table of medians and writes JSON.

    python benchmarks/bench_demo.py [--seeds 0 1 2] [--blocks ode spline] [--out benchmarks/results/demo.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from jko_plugin.datasets import two_moons
from jko_plugin.metrics import wasserstein2
from jko_plugin.workflows import default_config, train_flow


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--blocks", nargs="+", default=["spline", "ode"])
    ap.add_argument("--out", default="benchmarks/results/demo.json")
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        x_train = two_moons(20000, seed=seed, noise=0.05, standardize=True)
        x_test = two_moons(4000, seed=seed + 1, noise=0.05, standardize=True)
        x_other = two_moons(4000, seed=seed + 2, noise=0.05, standardize=True)
        floor = wasserstein2(x_other, x_test)
        gauss = wasserstein2(torch.randn(4000, 2, generator=torch.Generator().manual_seed(seed)), x_test)
        for block in args.blocks:
            config = default_config(block, seed=seed)
            flow, history, seconds = train_flow(x_train, x_test, config, progress=False)
            start = time.perf_counter()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                samples, _ = flow.sample(4000)
            sample_seconds = time.perf_counter() - start
            run = {"block": block, "seed": seed, "train_seconds": seconds, "sample_seconds_4000": sample_seconds,
                   "w2": wasserstein2(samples, x_test), "w2_floor": floor, "w2_gaussian": gauss,
                   "test_nll": history.blocks[-1].nll, "blocks": len(history.blocks),
                   "inversion_error": max(b.inversion_error for b in history.blocks)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    print(f"\n{'block':>6} {'train s':>8} {'W2':>7} {'floor':>7} {'N(0,I)':>7} {'NLL':>7}   (medians over seeds {args.seeds})")
    summary = {}
    for block in args.blocks:
        rs = [r for r in runs if r["block"] == block]
        med = {k: statistics.median(r[k] for r in rs) for k in ("train_seconds", "w2", "w2_floor", "w2_gaussian", "test_nll")}
        summary[block] = med
        print(f"{block:>6} {med['train_seconds']:>8.1f} {med['w2']:>7.4f} {med['w2_floor']:>7.4f} {med['w2_gaussian']:>7.4f} {med['test_nll']:>7.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, "medians": summary, "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
