"""Does a JKO row choose its iterates and steps on the density it is scored with?

compare's 2-D `jko` recipe with the ODE density and 2 RK4 steps per block (a few-step log-det the
optimiser exploits: BENCHMARKS.md s.4.0), moons, 60 s, seeds 0, 1, 2, through `compare` (so with
its selection split, within-step checks and `keep_best_steps`). Prints one JSON line per seed and
the median test NLL, and writes the rows to --out. Run it with another checkout on PYTHONPATH to
measure that code (the "before" rows: commit 38b6aef).

    python benchmarks/bench_scored_checks.py --out benchmarks/results/scored_checks/now.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import jko_plugin
from jko_plugin.compare.methods import METHODS, JKOMethod
from jko_plugin.compare.runner import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    METHODS["jko-ode2"] = JKOMethod("jko-ode2", "ode", "2 RK4 steps, ODE density", density="ode", steps=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            (r,) = compare("moons", ["jko-ode2"], budget_seconds=args.budget, seed=seed, out=Path(tmp) / str(seed))
            d = r["details"]
            row = dict(
                seed=seed,
                test=r["test_nll"],
                w2=r["w2"],
                gap=d.get("solver_gap"),
                kept=d["kept_steps"],
                val=[round(v, 3) for v in d["validation_nll_per_block"]],
                its=d["iterations_per_block"],
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"median test NLL {statistics.median(r['test'] for r in rows):.3f} ({jko_plugin.__file__})")
    if args.out:
        Path(args.out).write_text(json.dumps({"code": jko_plugin.__file__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
