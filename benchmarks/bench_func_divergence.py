"""Cost of a foreign velocity network in a JKOBlock: torch.func divergence against our fast path.

The same VelocityMLP is put in two JKOBlocks: directly (the fast path, forward-mode tangents by
hand in the same pass, ``VelocityMLP.forward_with_trace``) and behind a wrapper class, which the
block treats as a user's own network (exact divergence by ``vmap(jacfwd(...))``, Hutchinson by
``torch.func.jvp``). Both compute the same numbers (tests/test_foreign_velocity.py); this measures
the price of generality:
  train  one training iteration: transport (exact trace), JKO loss, backward, Adam step
  eval   one data -> latent pass with the exact log-det under no_grad (likelihood evaluation)
Prints medians over repeats (ms) and the ratio func / fast, and writes JSON.

    OMP_NUM_THREADS=1 flock /tmp/bench.lock python benchmarks/bench_func_divergence.py
    (options: --dims 2 8 32, --batch 512, --repeats 15, --out benchmarks/results/func_divergence.json)
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from jko_plugin import JKOBlock
from jko_plugin.steps.velocity import VelocityMLP


class Foreign(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, t):
        return self.mlp(x, t)


def train_step(block, opt, x, h=0.5):
    out = block.transport(x)
    loss = (0.5 * out.z.square().sum(-1) - out.log_det + out.sq_displacement / (2 * h)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/func_divergence.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{'d':>4} {'pass':>6} {'fast ms':>9} {'func ms':>9} {'ratio':>7}")
    for d in args.dims:
        mlp = VelocityMLP(d, (64, 64))
        blocks = {
            "fast": JKOBlock(d, velocity=mlp, steps=2, trace="exact"),
            "func": JKOBlock(d, velocity=Foreign(mlp), steps=2, trace="exact"),
        }
        x = torch.randn(args.batch, d)
        for kind in ("train", "eval"):
            ms = {}
            for name, block in blocks.items():
                if kind == "train":
                    block.train()
                    opt = torch.optim.Adam(block.parameters(), 1e-5)
                    ms[name] = median_ms(lambda b=block, o=opt: train_step(b, o, x), args.repeats)
                else:
                    block.eval()
                    with torch.no_grad():
                        ms[name] = median_ms(lambda b=block: b.inverse(x), args.repeats)
            ratio = ms["func"] / ms["fast"]
            rows.append(
                {"dim": d, "pass": kind, "fast_ms": ms["fast"], "func_ms": ms["func"], "ratio": ratio}
            )
            print(f"{d:>4} {kind:>6} {ms['fast']:>9.2f} {ms['func']:>9.2f} {ratio:>7.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "batch": args.batch,
        "repeats": args.repeats,
        "hidden": [64, 64],
        "solver": "rk4 x 2",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
