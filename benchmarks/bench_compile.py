"""Training iterations through ``torch.compile`` (``TrainerOptions(compile=True)``) against eager.

For each step (a 2-D spline step with 64 bins, a d = 16 ODE block with Hutchinson's trace, a
d = 64 coupling step), one process per mode times the trainer's own loss (``StepFitter.terms``:
transport, proximal loss, backward, Adam) on the same weights and batches: eager; compiled with
an empty inductor cache (``cold``: the first iteration compiles); compiled again with that cache
(``warm``: a user's second run). Reported: seconds of the first iteration and the median ms per
iteration over repeats.

    python benchmarks/bench_compile.py --repeats 5 --out benchmarks/results/compile/speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "spline-2d-64bins": dict(block="spline", dim=2, options=dict(spline_bins=64)),
    "ode-16d-hutchinson": dict(block="ode", dim=16, options=dict(trace="hutchinson")),
    "coupling-64d": dict(block="coupling", dim=64, options={}),
}


def child(case: str, compile: bool, iters: int, repeats: int) -> dict:
    import torch

    from jko_plugin.run_config import default_config
    from jko_plugin.steps.kinds import jko_steps
    from jko_plugin.training.distributed import DistributedContext
    from jko_plugin.training.options import TrainerOptions
    from jko_plugin.training.step_fit import StepFitter
    from jko_plugin.workflows import build_flow

    spec = CASES[case]
    torch.manual_seed(0)
    step = jko_steps(build_flow(default_config(spec["block"], **spec["options"]), spec["dim"]))[0]
    step.train()
    fitter = StepFitter(TrainerOptions(compile=compile, progress=False), DistributedContext())
    optimizer, params = fitter.optimizer(step, 10**6)
    data = torch.randn(8192, spec["dim"], generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)

    def one() -> None:
        batch = data[torch.randint(0, data.shape[0], (512,), generator=g)]
        fitter.update(fitter.loss(step, None, batch, 0.5), None, optimizer, params)

    began = time.perf_counter()
    one()
    first = time.perf_counter() - began
    for _ in range(3):
        one()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(iters):
            one()
        times.append((time.perf_counter() - began) / iters * 1e3)
    return {"first_iteration_s": first, "ms_per_iteration": statistics.median(times), "repeats_ms": times}


def run_child(case: str, mode: str, cache: str, iters: int, repeats: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cmd = [sys.executable, __file__, "--child", case, mode, "--iters", str(iters), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, mode = args.child
        print(json.dumps(child(case, mode != "eager", args.iters, args.repeats)))
        return
    rows = []
    for case in args.cases:
        with tempfile.TemporaryDirectory() as cache:
            row = {"case": case}
            for mode in ("eager", "cold", "warm"):  # warm: the cache the cold run filled
                row[mode] = run_child(case, mode, cache, args.iters, args.repeats)
            row["speed_up"] = row["eager"]["ms_per_iteration"] / row["warm"]["ms_per_iteration"]
            rows.append(row)
        print(
            f"{case:20s} eager {row['eager']['ms_per_iteration']:7.1f} ms  compiled "
            f"{row['warm']['ms_per_iteration']:7.1f} ms  x{row['speed_up']:.2f}  first iteration: "
            f"cold {row['cold']['first_iteration_s']:.1f} s, warm {row['warm']['first_iteration_s']:.1f} s",
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "threads": _threads()}, indent=1))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
