"""Speed of a `grid` step's training iteration: the table read as one weighted bag of two rows and
the given coordinate's spline computed once per batch, against the plain evaluation (two indexed
rows per point, and the one spline's parameters repeated for every point).

Both evaluations compute the same map (checked here in float64 to 1e-10 before timing). The same step (same
weights) is timed with both, interleaved, eager and through `torch.compile`; medians over repeats.

    flock /tmp/bench.lock python benchmarks/bench_grid_layer.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from jko_plugin.steps.grid import GridRQSpline, make_grid_step
from jko_plugin.training.step_fit import _transport_terms


class PlainGridRQSpline(GridRQSpline):
    """The same layer evaluated the plain way (the evaluation before commit c9ebd07)."""

    def _conditioner(self, x_given: Tensor) -> Tensor:
        bound = self.tail_bound
        position = (x_given.clamp(-bound, bound) + bound) * ((self.knots - 1) / (2 * bound))
        low = position.detach().floor().clamp_(0, self.knots - 2).long()
        t = (position - low)[:, None]
        return self.table[low] * (1 - t) + self.table[low + 1] * t

    def _spline(self, inputs: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return super()._spline(inputs, params.expand(inputs.shape[0], -1), inverse)


def set_evaluation(step: torch.nn.Module, plain: bool) -> None:
    for layer in step.flows:
        layer.__class__ = PlainGridRQSpline if plain else GridRQSpline


def time_training(step, data: Tensor, terms, iterations: int, batch: int) -> float:
    opt = torch.optim.Adam(step.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    h = torch.tensor(0.5)

    def one() -> None:
        rows = torch.randint(0, data.shape[0], (batch,), generator=gen)
        loss = sum(terms(step, data[rows], h, None, False))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(20):  # warm-up (and compilation)
        one()
    began = time.perf_counter()
    for _ in range(iterations):
        one()
    return (time.perf_counter() - began) / iterations * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid_layer.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    step = make_grid_step(2, knots=256, tail_bound=3.0)  # jko-grid's step 1
    with torch.no_grad():
        for p in step.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data = torch.randn(500_000, 2)
    check, x = copy.deepcopy(step).double(), data[:4000].double()
    ours = check.inverse(x)
    set_evaluation(check, plain=True)
    plain = check.inverse(x)
    same = all(torch.allclose(a, b, rtol=0, atol=1e-10) for a, b in zip(ours, plain))
    assert same, "the evaluations differ"
    compiled = torch.compile(_transport_terms)
    rows = []
    for mode, terms in (("eager", _transport_terms), ("compiled", compiled)):
        times = {"plain": [], "ours": []}
        for _ in range(args.repeats):
            for name in ("plain", "ours"):
                set_evaluation(step, plain=name == "plain")
                times[name].append(time_training(step, data, terms, args.iterations, 1024))
        row = {"mode": mode, **{f"{k}_ms_per_it": statistics.median(v) for k, v in times.items()}}
        row["speedup"] = row["plain_ms_per_it"] / row["ours_ms_per_it"]
        rows.append(row)
    samples = {"plain": [], "ours": []}
    flow_steps = [step] * 4
    for _ in range(args.repeats):
        for name in ("plain", "ours"):
            set_evaluation(step, plain=name == "plain")
            z = torch.randn(10_000, 2)
            began = time.perf_counter()
            with torch.no_grad():
                for s in flow_steps:
                    z = s.forward(z)[0]
            samples[name].append(time.perf_counter() - began)
    sampling = {f"{k}_10k_samples_s": statistics.median(v) for k, v in samples.items()}
    print("| training iteration (batch 1,024) | plain ms | ours ms | speed-up |")
    print("|---|---|---|---|")
    for r in rows:
        plain_ms, ours_ms = r["plain_ms_per_it"], r["ours_ms_per_it"]
        print(f"| {r['mode']} | {plain_ms:.2f} | {ours_ms:.2f} | {r['speedup']:.2f}x |")
    print(f"10k samples through 4 steps: plain {sampling['plain_10k_samples_s']:.4f} s, "
          f"ours {sampling['ours_10k_samples_s']:.4f} s")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"training": rows, "sampling": sampling, "repeats": args.repeats}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
