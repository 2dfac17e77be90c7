"""Speed of one JKO training iteration: our block against autograd-divergence baselines.

All variants integrate the same velocity MLP with the same RK4 steps and compute the same loss
E[|T(x)|^2/2 - log det + |T(x)-x|^2/(2h)]; only the divergence differs:
  ours      forward-mode tangents through the MLP (jko_plugin.VelocityMLP.forward_with_trace)
  vjp-batch one batched vector-Jacobian product (torch.autograd.grad(..., is_grads_batched=True))
  naive     one autograd.grad per dimension (create_graph=True), the textbook FFJORD loop
Prints a table (median ms per iteration over repeats, ratio to ours) and writes JSON.

    python benchmarks/bench_block.py [--repeats 5] [--iters 20] [--out benchmarks/results/block.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from jko_plugin import JKOBlock
from jko_plugin._ops import SOLVERS, integrate


def autograd_trace(block, x, s, batched):
    with torch.enable_grad():
        x = x if x.requires_grad else x.requires_grad_(True)
        v = block.velocity(x, s)
        d = x.shape[1]
        if batched:
            eye = torch.eye(d, dtype=x.dtype).unsqueeze(1).expand(d, *x.shape)
            (jac_rows,) = torch.autograd.grad(v, x, eye, create_graph=True, is_grads_batched=True)
            tr = torch.einsum("ibi->b", jac_rows)
        else:
            tr = x.new_zeros(x.shape[0])
            for i in range(d):
                (g,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=True)
                tr = tr + g[:, i]
    return v, tr


def loss_autograd(block, x, h, batched):
    def func(xs, s):
        v, tr = autograd_trace(block, xs, s, batched)
        return v, (tr,)

    z, (ld,) = integrate(func, x, 0.0, 1.0, block.steps, SOLVERS[block.solver], 1)
    return (0.5 * z.square().sum(-1) - ld + (z - x).square().sum(-1) / (2 * h)).mean()


def loss_ours(block, x, h):
    out = block.transport(x)
    return (0.5 * out.z.square().sum(-1) - out.log_det + out.sq_displacement / (2 * h)).mean()


def time_iters(fn, block, x, iters):
    opt = torch.optim.Adam(block.parameters(), 1e-3)
    fn(block, x)  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        loss = fn(block, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / iters * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/block.json")
    args = ap.parse_args()
    variants = {
        "ours": lambda b, x: loss_ours(b, x, 0.5),
        "vjp-batch": lambda b, x: loss_autograd(b, x, 0.5, True),
        "naive": lambda b, x: loss_autograd(b, x, 0.5, False),
    }
    rows = []
    for dim in (2, 8):
        for steps in (2, 4):
            torch.manual_seed(0)
            x = torch.randn(args.batch, dim)
            times = {k: [] for k in variants}
            for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
                for name, fn in variants.items():
                    torch.manual_seed(0)
                    block = JKOBlock(dim, (64, 64), steps=steps, trace="exact")
                    times[name].append(time_iters(fn, block, x, args.iters))
            base = statistics.median(times["ours"])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append(
                    {
                        "dim": dim,
                        "rk4_steps": steps,
                        "variant": name,
                        "ms_per_iter": med,
                        "ratio_to_ours": med / base,
                        "all_ms": ts,
                    }
                )
    print(f"{'d':>3} {'rk4':>4} {'variant':>10} {'ms/iter':>9} {'x ours':>7}")
    for r in rows:
        print(
            f"{r['dim']:>3} {r['rk4_steps']:>4} {r['variant']:>10} {r['ms_per_iter']:>9.2f} {r['ratio_to_ours']:>7.2f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
