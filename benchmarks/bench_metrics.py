"""Times jko_plugin.metrics.wasserstein2 and measures its error against exact OT (POT's ot.emd2).

Pairs of samples (n points each), float32 tensors for our solvers, float64 for POT:
  d = 2:  two-moons data (standardised, noise 0.05) against N(0, I)  ("far": a poor model), and
          two independent two-moons samples                          ("floor": a perfect model);
  d = 64: N(0, I) against N(0.25, I)                                 ("shift"), and
          two independent N(0, I) samples                            ("floor").
For every n in {1000, 5000, 10000 (d = 2), 20000}, every backend that runs without KeOps:
"sparse" (d = 2), "tensorized" (ours; in 2-D only at n = 1000), "geomloss" (GeomLoss's
SamplesLoss, tensorized) with our blur and with its defaults (blur 0.05, scaling 0.5), and POT's
exact solver (cost matrix + network simplex) where affordable (n <= 10000 in 2-D, n <= 5000 in
64-D). Times are medians over repeats (3 when a run takes under 3 s, else 1), all measured in
this run. Prints a table and writes JSON.

    flock /tmp/jko-bench.lock python benchmarks/bench_metrics.py [--threads 2] [--sizes N ...] [--out PATH]
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import geomloss
import numpy as np
import ot
import torch

from jko_plugin.datasets import two_moons
from jko_plugin.metrics import sinkhorn

SIZES = {2: (1000, 5000, 10000, 20000), 64: (1000, 5000, 20000)}
EXACT_MAX = {2: 10000, 64: 5000}


def pairs(d: int, n: int) -> dict:
    gen = torch.Generator().manual_seed(n + d)
    if d == 2:
        data = two_moons(n, seed=n, noise=0.05, standardize=True)
        return {
            "far": (data, torch.randn(n, 2, generator=gen)),
            "floor": (data, two_moons(n, seed=n + 1, noise=0.05, standardize=True)),
        }
    x = torch.randn(n, d, generator=gen)
    return {
        "shift": (x, torch.randn(n, d, generator=gen) + 0.25),
        "floor": (x, torch.randn(n, d, generator=gen)),
    }


def backends(d: int, n: int) -> dict:
    """Backend label -> keyword arguments of sinkhorn(), for those affordable at this size."""
    out = {}
    if d == 2:
        out["sparse"] = {"backend": "sparse"}
    if d > 2 or n <= 1000:  # in 2-D the dense solver needs hundreds of iterations: minutes at n = 5000
        out["tensorized"] = {"backend": "tensorized"}
    if n <= 1000:  # GeomLoss's logsumexp takes a slow path on underflowing exponentials
        out["geomloss (our blur, scaling 0.95)"] = {"backend": "geomloss"}
    if n <= 5000:
        out["geomloss (its defaults)"] = {"backend": "geomloss", "blur": 0.05, "scaling": 0.5}
    return out


def timed(fn, budget: float = 3.0) -> tuple[float, object, int]:
    start = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - start]
    while times[0] < budget and len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out, len(times)


def exact(x: torch.Tensor, y: torch.Tensor) -> float:
    cost = ot.dist(x.double().numpy(), y.double().numpy())  # squared Euclidean
    return math.sqrt(ot.emd2([], [], cost, numItermax=10**8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/metrics.json")
    ap.add_argument("--sizes", type=int, nargs="*", help="restrict n (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    load_start = os.getloadavg()
    columns = (
        ("d", 3),
        ("n", 6),
        ("pair", 6),
        ("solver", -34),
        ("seconds", 8),
        ("rep", 3),
        ("W2", 9),
        ("exact", 9),
    )
    print(" ".join(f"{name:<{-w}}" if w < 0 else f"{name:>{w}}" for name, w in columns), f"{'error':>8}")
    for d, sizes in SIZES.items():
        for n in sizes:
            if args.sizes and n not in args.sizes:
                continue
            for pair, (x, y) in pairs(d, n).items():
                ref, ref_seconds = math.nan, math.nan
                if n <= EXACT_MAX[d]:
                    ref_seconds, ref, reps = timed(lambda: exact(x, y), budget=1.0)
                    rows.append(
                        dict(
                            d=d,
                            n=n,
                            pair=pair,
                            solver="POT ot.emd2 (exact)",
                            seconds=ref_seconds,
                            repeats=reps,
                            w2=ref,
                            exact=ref,
                            rel_err=0.0,
                        )
                    )
                    print(
                        f"{d:>3} {n:>6} {pair:>6} {'POT ot.emd2 (exact)':<34} {ref_seconds:>8.2f} {reps:>3} "
                        f"{ref:>9.5f} {ref:>9.5f}",
                        flush=True,
                    )
                for label, kwargs in backends(d, n).items():
                    seconds, res, reps = timed(lambda: sinkhorn(x, y, **kwargs))
                    rel = (res.w2 - ref) / ref if math.isfinite(ref) else math.nan
                    rows.append(
                        dict(
                            d=d,
                            n=n,
                            pair=pair,
                            solver=label,
                            seconds=seconds,
                            repeats=reps,
                            w2=res.w2,
                            exact=ref,
                            rel_err=rel,
                            blur=res.blur,
                            scaling=kwargs.get("scaling"),
                            backend=res.backend,
                            iterations=res.iterations,
                            marginal_error=res.marginal_error,
                        )
                    )
                    print(
                        f"{d:>3} {n:>6} {pair:>6} {label:<34} {seconds:>8.2f} {reps:>3} {res.w2:>9.5f} "
                        f"{ref:>9.5f} {rel:>+8.2%}",
                        flush=True,
                    )

    def find(d: int, n: int, solver: str) -> list:
        return [r for r in rows if r["d"] == d and r["n"] == n and r["solver"] == solver]

    targets = []
    for r in find(2, 10000, "sparse"):
        ok = r["seconds"] <= 2.0 and abs(r["rel_err"]) <= 0.02
        targets.append(
            f"d=2, n=10000, {r['pair']}: {r['seconds']:.2f} s (target <= 2 s), "
            f"error {r['rel_err']:+.2%} (target within 2%): {'met' if ok else 'NOT met'}"
        )
    for r in find(64, 5000, "tensorized"):
        pot = find(64, 5000, "POT ot.emd2 (exact)")
        pot = [p for p in pot if p["pair"] == r["pair"]][0]["seconds"]
        ok = r["seconds"] < pot and abs(r["rel_err"]) <= 0.03
        targets.append(
            f"d=64, n=5000, {r['pair']}: {r['seconds']:.2f} s vs POT {pot:.2f} s, "
            f"error {r['rel_err']:+.2%} (target: faster at 3%): {'met' if ok else 'NOT met'}"
        )
    print("\n" + "\n".join(targets))
    meta = {
        "command": "flock /tmp/jko-bench.lock python benchmarks/bench_metrics.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "versions": {
            "torch": torch.__version__,
            "geomloss": geomloss.__version__,
            "pot": ot.__version__,
            "numpy": np.__version__,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "targets": targets, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
