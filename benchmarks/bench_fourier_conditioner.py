"""Coupling spline steps whose conditioners see Fourier features of their input, on rose (300 s).

An experiment, not a method: does the 2-D picture's detail come faster when the conditioner MLP
gets sin/cos(pi 2^k x), k < K, beside x (the identity features' positional encoding)? Variants
(`bench_jko_recipes.run`'s harness, 4 `jko-coupling` steps of 2 layers, 64 bins, no LU map,
within-step checks): `cpl-bins64` (no features), `cpl-bins64-ff6` / `-ff8` (K = 6 / 8),
`cpl4-bins64-ff6` (4 layers a step). The last layer still starts at zero, so each step starts at
the identity. Seed 0 (results/spline_bins/fourier_coupling_rose_seed0.log, 20,000 training
points): ff6 2.670 against 2.632 without features on validation NLL: the features lose.

    flock /tmp/bench.lock python benchmarks/bench_fourier_conditioner.py rose 0 cpl-bins64-ff6 cpl-bins64
"""

import json
import math
import sys

import torch
from torch import nn

sys.path.insert(0, "benchmarks")
import bench_jko_recipes as B
from jko_plugin.steps.coupling import IdentityInitCoupledRQSpline


class Fourier(nn.Module):
    def __init__(self, freqs):
        super().__init__()
        self.register_buffer("freqs", torch.tensor(freqs, dtype=torch.float32))

    def forward(self, x):
        a = x.unsqueeze(-1) * self.freqs  # (n, k, F)
        return torch.cat([x, torch.sin(a).flatten(1), torch.cos(a).flatten(1)], 1)


_make = B.make_flow


def make_flow(dim, n, block, ff=None, **kw):
    flow = _make(dim, n, block=block, **kw)
    if ff:
        freqs = [math.pi * 2.0**k for k in range(ff)]
        for m in flow.modules():
            if isinstance(m, IdentityInitCoupledRQSpline):
                net = m.prqct.transform_net
                old = net.initial_layer
                k = old.in_features
                net.preprocessing = Fourier(freqs)
                net.initial_layer = nn.Linear(k * (1 + 2 * len(freqs)), old.out_features)
    return flow


B.make_flow = make_flow
for name, flow in {
    "cpl-bins64": dict(layers=2, bins=64, mix="none"),
    "cpl-bins64-ff6": dict(layers=2, bins=64, mix="none", ff=6),
    "cpl4-bins64-ff6": dict(layers=4, bins=64, mix="none", ff=6),
    "cpl-bins64-ff8": dict(layers=2, bins=64, mix="none", ff=8),
}.items():
    B.COUPLING_VARIANTS[name] = dict(
        num_blocks=4, flow=flow, trainer=dict(step_checks=10), weights=None, passes=1
    )
torch.set_num_threads(2)
ds, seed = sys.argv[1], int(sys.argv[2])  # dataset, seed, then variants
for v in sys.argv[3:]:
    row = B.run(ds, v, seed, B.BUDGETS[ds], 20000)  # as measured: 20,000 training points
    keys = (*B.LOG_KEYS, "iterations", "kept_iterations")
    print(json.dumps({k: row[k] for k in keys}), flush=True)
