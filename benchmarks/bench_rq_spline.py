"""Speed of the spline steps with our mask-free spline evaluation against normflows' own.

For each case, the same step (same weights) is timed with both evaluations, interleaved, and the
medians over repeats are reported: a training iteration (transport, proximal loss, backward, Adam)
of a 2-D autoregressive spline step and of a d = 64 coupling step, and 10,000 samples (latent ->
data) through four of them.

    python benchmarks/bench_rq_spline.py --repeats 5 --out benchmarks/results/rq_spline.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from jko_plugin.steps.kinds import make_coupling_step, make_spline_step
from jko_plugin.steps.rq_spline import _FAST

PAIRS = {fast: plain for plain, fast in _FAST.items()}  # our transform -> normflows' own


def set_evaluation(module: torch.nn.Module, ours: bool) -> None:
    """Switch every spline transform of ``module`` to our evaluation or back to normflows'."""
    for m in module.modules():
        for fast, plain in PAIRS.items():
            if type(m) in (fast, plain):
                m.__class__ = fast if ours else plain


def make_step(case: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if case["kind"] == "spline":
        return make_spline_step(case["dim"], bins=case["bins"], tail_bound=3.0)
    return make_coupling_step(case["dim"], bins=case["bins"])


def time_training(step: torch.nn.Module, dim: int, iters: int) -> float:
    opt = torch.optim.Adam(step.parameters(), lr=1e-4)
    data = torch.randn(8192, dim)
    g = torch.Generator().manual_seed(0)

    def one() -> None:
        batch = data[torch.randint(0, data.shape[0], (512,), generator=g)]
        out = step.transport(batch)
        loss = 0.5 * out.z.square().sum(-1).mean() - out.log_det.mean() + out.sq_displacement.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        one()
    began = time.perf_counter()
    for _ in range(iters):
        one()
    return (time.perf_counter() - began) / iters


@torch.no_grad()
def time_sampling(steps: list[torch.nn.Module], dim: int, n: int = 10_000) -> float:
    z = torch.randn(n, dim)
    began = time.perf_counter()
    for step in reversed(steps):
        z = step(z)[0]
    return time.perf_counter() - began


CASES = [
    {"kind": "spline", "dim": 2, "bins": 16},
    {"kind": "spline", "dim": 2, "bins": 64},
    {"kind": "coupling", "dim": 64, "bins": 8},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/rq_spline.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in CASES:
        step = make_step(case)
        with torch.no_grad():  # a step that moves, as after training
            for p in step.parameters():
                p.add_(0.05 * torch.randn_like(p))
        samplers = [make_step(case) for _ in range(4)]
        times: dict[str, dict[str, list[float]]] = {"train": {}, "sample": {}}
        for _ in range(args.repeats):
            for ours in (False, True):
                label = "ours" if ours else "normflows"
                set_evaluation(step, ours)
                for s in samplers:
                    set_evaluation(s, ours)
                times["train"].setdefault(label, []).append(time_training(step, case["dim"], args.iters))
                times["sample"].setdefault(label, []).append(time_sampling(samplers, case["dim"]))
        med = {what: {k: statistics.median(v) for k, v in t.items()} for what, t in times.items()}
        row = {
            **case,
            "train_ms_normflows": 1e3 * med["train"]["normflows"],
            "train_ms_ours": 1e3 * med["train"]["ours"],
            "sample_s_normflows": med["sample"]["normflows"],
            "sample_s_ours": med["sample"]["ours"],
            "raw": times,
        }
        row["train_speedup"] = row["train_ms_normflows"] / row["train_ms_ours"]
        row["sample_speedup"] = row["sample_s_normflows"] / row["sample_s_ours"]
        rows.append(row)
    print("| step | d | bins | train ms/it normflows | ours | speed-up | 10k samples s normflows | ours | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['dim']} | {r['bins']} | {r['train_ms_normflows']:.1f} | {r['train_ms_ours']:.1f} "
            f"| {r['train_speedup']:.2f}x | {r['sample_s_normflows']:.3f} | {r['sample_s_ours']:.3f} "
            f"| {r['sample_speedup']:.2f}x |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"repeats": args.repeats, "iters": args.iters, "threads": args.threads, "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
