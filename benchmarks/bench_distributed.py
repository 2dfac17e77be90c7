"""Throughput of block-wise JKO training with 1 and 2 processes (gloo, CPU), and the share of a
training step spent communicating.

Trains the demo's ODE block (hidden (64, 64), 2 RK4 steps) on standardised two moons with a
global batch of 512, timing each block's training loop (``StepFitter.train``: batches,
forward, backward, DDP all-reduce, optimizer), and reports samples per second per block:
  1 proc x 1 thread     the single-process baseline on one core
  1 proc x 2 threads    the single-process baseline on both cores (intra-op threads)
  2 procs x 1 thread    torchrun-style: 2 gloo ranks, 256 points each per step, DDP

The communication share comes from the 2-rank run: the median step with DDP's gradient all-reduce
and the trainer's one-scalar NaN check, against the same step under ``no_sync()`` without the check.

    flock /tmp/jko-bench.lock python benchmarks/bench_distributed.py [--repeats 3] [--iters 100]
"""

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jko_plugin import make_flow
from jko_plugin.datasets import two_moons
from jko_plugin.training.distributed import LossTerms, wrap_ddp
from jko_plugin.training.options import TrainerOptions
from jko_plugin.training.step_fit import StepFitter
from jko_plugin.training.trainer import JKOTrainer

HS = [0.5, 0.7]
BATCH = 512


def timed_fit(iters: int, seed: int) -> list[float]:
    """Train 2 blocks; return the training-loop seconds of each block."""
    x = torch.as_tensor(two_moons(20000, seed=0, noise=0.05, standardize=True)).float()
    torch.manual_seed(0)
    flow = make_flow(2, len(HS), block="ode", hidden=(64, 64), steps=2)
    trainer = JKOTrainer(
        flow, HS, iterations=iters, batch_size=BATCH, progress=False, seed=seed, eval_size=500
    )
    times = []
    inner = StepFitter.train

    def timed(self: StepFitter, *args: object) -> None:
        if self.ctx.active:
            dist.barrier()
        start = time.perf_counter()
        inner(self, *args)
        times.append(time.perf_counter() - start)

    StepFitter.train = timed
    try:
        trainer.fit(x)
    finally:
        StepFitter.train = inner
    return times


def comm_share(iters: int) -> dict:
    """Median step times with and without communication (2 ranks, after ``fit`` made the group)."""
    from jko_plugin.training.distributed import DistributedContext

    ctx = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), backend="gloo")
    x = torch.as_tensor(two_moons(20000, seed=ctx.rank, noise=0.05, standardize=True)).float()
    torch.manual_seed(0)
    step = make_flow(2, 1, block="ode", hidden=(64, 64), steps=2).flows[0]
    fitter = StepFitter(TrainerOptions(progress=False), ctx)
    ddp = wrap_ddp(LossTerms(step, lambda s, out: fitter.loss_terms(s, out, 0.5)), ctx, torch.device("cpu"))
    opt = torch.optim.Adam(step.parameters(), lr=1e-3)
    local = BATCH // ctx.world_size
    g = torch.Generator().manual_seed(ctx.rank)

    def one(sync: bool) -> float:
        batch = x[torch.randint(0, x.shape[0], (local,), generator=g)]
        dist.barrier()
        start = time.perf_counter()
        if sync:
            loss = ddp(batch).sum()
            ctx.all_true(bool(torch.isfinite(loss)))
            loss.backward()
        else:
            with ddp.no_sync():
                loss = ddp(batch).sum()
                bool(torch.isfinite(loss))
                loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for _ in range(10):
        one(True)
    with_comm, without = [], []
    for _ in range(iters):  # interleaved, so that load changes hit both alike
        with_comm.append(one(True))
        without.append(one(False))
    # The all-reduce alone, on a gradient-sized buffer.
    n_params = sum(p.numel() for p in step.parameters())
    buf = torch.zeros(n_params)
    ar = []
    for _ in range(iters):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buf)
        ar.append(time.perf_counter() - start)
    return {
        "step_ms": 1e3 * statistics.median(with_comm),
        "step_no_comm_ms": 1e3 * statistics.median(without),
        "grad_allreduce_ms": 1e3 * statistics.median(ar),
        "params": n_params,
    }


def _worker(rank: int, world: int, port: int, iters: int, repeats: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    runs = [timed_fit(iters, seed) for seed in range(repeats)]
    comm = comm_share(200)
    torch.save({"runs": runs, "comm": comm}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def summarize(runs: list[list[float]], iters: int) -> dict:
    per_block = [t for r in runs for t in r]
    med = statistics.median(per_block)
    return {
        "block_seconds_median": med,
        "block_seconds_all": per_block,
        "samples_per_second_per_block": iters * BATCH / med,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    parser.add_argument("--md", default="benchmarks/results/distributed.md")
    args = parser.parse_args()

    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs = [timed_fit(args.iters, seed) for seed in range(args.repeats)]
        results[f"1proc_{threads}thread"] = summarize(runs, args.iters)
    tmp = Path(args.out).parent / "_dist_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, args.iters, args.repeats, str(tmp)), nprocs=2)
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(2)]
    for r in range(2):
        (tmp / f"rank{r}.pt").unlink()
    tmp.rmdir()
    # A block ends when its slowest rank does: take the max over ranks of each block's time.
    runs = [[max(a, b) for a, b in zip(ra, rb)] for ra, rb in zip(ranks[0]["runs"], ranks[1]["runs"])]
    results["2proc_1thread_gloo"] = summarize(runs, args.iters)
    comm = ranks[0]["comm"]
    comm["comm_share"] = 1 - comm["step_no_comm_ms"] / comm["step_ms"]
    base = results["1proc_1thread"]["samples_per_second_per_block"]
    for v in results.values():
        v["speedup_vs_1proc_1thread"] = v["samples_per_second_per_block"] / base
    cpu = platform.processor() or platform.machine()
    report = {
        "machine": f"{cpu}, {os.cpu_count()} cores (shared), torch {torch.__version__}",
        "gpu": "none: no GPU machine was lent to this task, so no NCCL figures",
        "config": {
            "model": "make_flow(2, 2, block='ode', hidden=(64, 64), steps=2), float32",
            "data": "two_moons(20000), standardised",
            "global_batch": BATCH,
            "iterations_per_block": args.iters,
            "repeats": args.repeats,
        },
        "throughput": results,
        "communication": comm,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    rows = [
        f"| {name} | {v['samples_per_second_per_block']:,.0f} | {v['block_seconds_median']:.2f} | "
        f"{v['speedup_vs_1proc_1thread']:.2f}x |"
        for name, v in results.items()
    ]
    md = "\n".join(
        [
            "### Distributed training (torchrun / DDP, gloo on CPU)",
            "",
            f"{report['machine']}; {report['config']['model']}, global batch {BATCH}, "
            f"{args.iters} iterations per block, median over {args.repeats} runs x 2 blocks "
            "(training loop only). No GPU was lent to this task: no NCCL figures.",
            "",
            "| run | samples/s per block | s per block | vs 1 proc x 1 thread |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Communication share of a 2-rank step: {100 * comm['comm_share']:.0f}% "
            f"(median step {comm['step_ms']:.2f} ms with DDP's gradient all-reduce and the NaN check, "
            f"{comm['step_no_comm_ms']:.2f} ms under no_sync(); an all-reduce of the "
            f"{comm['params']} gradients alone takes {comm['grad_allreduce_ms']:.3f} ms).",
            "",
            "Command: `flock /tmp/jko-bench.lock python benchmarks/bench_distributed.py`",
            "",
        ]
    )
    Path(args.md).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
