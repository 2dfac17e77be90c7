"""JKO flows at equal wall-clock time: which recipe trains the best density?

ODE variants (`--kind ode`, moons 60 s and gmm16 120 s; all 6 ODE blocks on the geometric schedule h0 = 0.5, growth 1.4, the exact map density
of `density="auto"`, trained by `JKOTrainer` under a `TimeBudget` that includes its own cost
calibration; data standardised by a `Standardize` layer fitted on the training split). Every
variant trains with batches of 512 at lr 3e-3 unless its name says otherwise, so the runs recorded
before commit 7dca40d stay comparable, and with a tanh MLP unless its name says otherwise;
compare's `jko` is now `front-checks-lr1e2-ode` in 2-D (`front-checks-lr1e2` takes the exact map
density there) and `front-checks-lr1e2-silu-deep` above d = 3 (`default_velocity`):

  default   MLP 64x64 tanh, time-dependent, 2 RK4 steps, equal time per block (`jko-flow`'s default
            before block 1's three shares and lr 1e-2)
  front     default, block 1 given 3 shares of the time (it moves the data the most)
  iflow     JKO-iFlow's recipe: MLP 3 x 128 softplus, time-independent velocity, 3 RK4 steps,
            each block warm-started from the previous one
  reparam   default, then JKO-iFlow's adaptive re-spacing (`adapt="reparametrize"`): the budget
            covers both passes
  odedens   default with the ODE's density (`density="ode"`: trained on the 2-step map's
            integrated divergence, scored and sampled with 8 RK4 steps per block, as `compare` does)
            instead of the exact map density; only where d <= EXACT_MAP_MAX_DIM (above, "auto"
            already is "ode" and this variant is the default)
  front-odedens  front and odedens together
  checks    default with within-step early stopping (`step_checks=10`): each block keeps its best
            iterate on a selection sample of its own seed, never the validation sample reported
  front-checks, odedens-checks, front-odedens-checks   those variants with `checks`' early stopping
  front5-checks  front-checks with 5 shares for block 1
  front-checks-rk1, front-checks-wide, front-checks-4   front-checks with 1 RK4 step per block in
            training (half the cost of an iteration), a 128 x 128 MLP, or 4 blocks (3, 1, 1, 1
            shares) instead of 6 (gmm16, `--variants`)
  front-checks-lr6e3, front-checks-lr1e2, front-checks-lr2e2, front-checks-lr1.5e3   front-checks
            with learning rate 6e-3, 1e-2, 2e-2 or 1.5e-3 instead of 3e-3 (gmm16, where block 1 still improves when its
            time ends; moons)
  front-checks-lr1e2-fixedplan   front-checks-lr1e2 (compare's `jko`) with each block's length
            fixed by the estimate before training (`TimeBudget.revise` off: the plan before commit 8264765)
  front-checks-lr1e2-ode   front-checks-lr1e2 with the ODE density in every dimension: compare's
            `jko` exactly (above d = 3 it is front-checks-lr1e2)
  front-checks-lr1e2-silu, -softplus, -deep, -probes2   front-checks-lr1e2-ode with a SiLU or
            softplus MLP instead of tanh, a third hidden layer of 64, or 2 Hutchinson probes instead
            of 1 (gmm16, moons); -silu-deep, -silu-wide: SiLU with 3 x 64 or 2 x 128 hidden units
  front-checks-b1024, front-checks-b256   front-checks with batches of 1,024 or 256 points
            instead of 512 (gmm16)
  iflow-front-checks   front-checks with JKO-iFlow's whole recipe (`iflow`: its network, RK4
            steps and warm starts; gmm16, `--variants`)
  jko-compiled  compare's `jko` above d = 3 (3 x 64 SiLU, lr 1e-2, ODE density) trained through
            torch.compile with 2 RK4 steps; -steps3 / -steps4 with 3 or 4 (-steps3 is compare's
            `jko` now); -4, -wide, -map, -b1024: 4 blocks, 3 x 128, the map density, batches of
            1,024; -steps3-adamw1e-3 / 1e-2: AdamW with that weight decay; -steps3-4 and
            -steps3-wide: 4 blocks or 3 x 128 with 3 steps; -steps3-b1024, -steps3-lr2e2: batches
            of 1,024 or lr 2e-2 with 3 steps (gmm16, `--num-train`); -steps3-ema99 / -ema999:
            each step ends at (and its checks score) an EMA of its weights with decay 0.99 / 0.999
  jko-2d-steps2, jko-2d-steps3  compare's `jko` in 2-D (2 x 64 tanh, exact trace, ODE density)
            with 2 or 3 RK4 steps; -steps3-map: scored on the exact density of the trained 3-step
            map (`density="map"`), trained on it too (moons; `--budget` for longer runs)

The trace in training is `compare`'s: exact up to d = 3, Hutchinson's (one Rademacher probe,
fixed along each solve) above. Scoring and sampling go through `ode_density`, as in `compare`.

Spline variants (`--kind spline`, checkerboard 30 s and moons 60 s; `jko-spline`'s steps of 2
autoregressive RQ-spline layers, 64 hidden, geometric schedule):

  spline        4 steps, equal time per step (`jko-spline`'s default)
  spline-front  4 steps, step 1 given 3 shares of the time
  spline-6      6 steps (the schedule reaches h = 2.7 instead of 1.4)
  spline-wide   4 steps, 128 hidden units per conditioner
  spline-checks 4 steps, within-step early stopping as `checks` (`jko-spline`'s default in compare)
  spline-bins16-checks  spline-checks with 16 spline bins instead of 8 (`jko-spline`'s default in 2-D)
  spline-bins16-tb3first-checks  spline-bins16-checks with step 1's splines on [-3, 3] (as
            jko-spline-64's), on moons and checkerboard
  spline-bins32-checks, spline-6-bins16-checks, spline-wide-bins16-checks   32 bins, 6 steps, or
            128 hidden units, on rose at 300 s (`--datasets rose`)
  spline-bins64-checks  64 bins, on rose and tree at 300 s (`--datasets rose tree`) and on the
            default sets
  spline-bins64-front-checks  64 bins, step 1 with 3 shares of the budget (rose and tree, where
            steps 3-4 of the 64-bin compare rows went unused)
  spline-bins64-tb3-checks, spline-bins128-checks, spline-bins128-tb3-checks   64 or 128 bins, with
            the splines' interval [-B, B] narrowed from B = 5 to B = 3 (standardised rose and tree
            lie within 3; outside it a spline is the identity), on rose and tree at 300 s
  spline-bins64-b2048-checks  64 bins, batches of 2,048 points instead of 512 (JKO-iFlow's
            2,000), on rose with its 500,000 training points
  spline-bins64-front-lr5e3-checks, spline-bins64-front-lr1.5e3-checks   64 bins, step 1 with 3
            shares, learning rate 5e-3 or 1.5e-3 instead of 3e-3 (rose, 500,000 points: the 64-bin
            steps are limited by time there)
  spline-bins64-front-tb3-checks  64 bins, step 1 with 3 shares, B = 3 (tree, 500,000 points,
            where every step still improved when its time ended)
  spline-bins64-front-tb3first-checks  spline-bins64-front-tb3-checks with B = 3 in step 1 only
            (the data side, where the standardised picture lies within 3); steps 2-4 keep B = 5,
            so latent draws beyond 3 are still moved when sampling
  spline-bins64-front-tb3first-b256-checks  the same with batches of 256 points instead of 512:
            a 64-bin iteration is mostly fixed per-op cost, so halving the batch buys iterations
  spline-bins64-front-tb3first-compiled-checks  the same trained through torch.compile
            (TrainerOptions.compile): the same model, faster iterations after a compilation
  spline-bins64-3steps-front-tb3first-checks  3 steps (shares 3, 1, 1) instead of 4: on rose the
            steps after 2 added 0.002 nats, so their time is given to step 1 (60% of it, not 50%)
  spline-bins64-2steps-front-tb3first-checks  2 steps (shares 3, 1): step 1 with 75% of the time
  spline-bins64-w4211-checks  64 bins, shares (4, 2, 1, 1): steps 3 and 4 kept early iterates
  spline-bins64-front-wide-checks  64 bins, step 1 with 3 shares, 96 hidden units
  spline-lu-checks  spline-checks with an identity-initialised LU linear map opening each step
            (`mix="lu"`, as the coupling steps), on gmm16 at 120 s (`--datasets gmm16`)

Coupling variants (`--kind coupling`, digits 120 s, d = 64; `jko-coupling`'s steps of 2 coupling
RQ-spline layers whose alternating masks split the coordinates the same way in every layer; digits
is a fixed set: compare's 80/20 split, then 20% of its training part for validation and 10% of the
rest for the within-step checks):

  coupling-checks          4 steps of 2 layers (`jko-coupling`'s default), within-step checks
  coupling-permute-checks  each step in its own random order of the coordinates (`mix="permute"`)
  coupling-lu-checks       each step starts with an identity-initialised LU linear map (`mix="lu"`)
  coupling-4layers-checks, coupling-lu-4layers-checks   4 coupling layers per step

Grid variants (`--kind grid`, tree and rose 300 s, 2-D: `GridRQSpline` steps, a spline of
coordinate 0 and one of coordinate 1 read from a table of rows over coordinate 0; 4 steps, step 1
with 3 shares and on [-3, 3], lr 1e-2, batches of 512, 128 bins, 128 rows, 2 layers (conditioning
on 0, then 1) unless the name says otherwise):

  grid                      as above
  grid-1layer               one layer per step (every step conditions coordinate 1 on 0)
  grid-lr3e-3, grid-1layer-lr3e-3   lr 3e-3
  grid-b1024, grid-1layer-b1024, grid-1layer-b2048   batches of 1,024 / 2,048
  grid-k256, grid-1layer-k256, grid-1layer-k64   256 / 64 table rows
  grid-1layer-bins256, grid-bins64   256 / 64 bins
  grid-1layer-b1024-compiled   trained through torch.compile
  grid-1layer-b1024-bins64, -bins32   batches of 1,024 with 64 / 32 bins (`jko-grid`: 64)
  grid-1layer-b1024-bins64-k192, -k256, -k384, -k512   the same with 192 / 256 (`jko-grid`) / 384 /
            512 rows
  grid-1layer-b1024-bins64-6steps   6 steps (shares 3, 1, 1, 1, 1, 1)
  From here on the `jko-grid` recipe (1 layer, batches of 1,024, 64 bins, 256 rows) but:
  grid-given1, grid-given1-first, grid-rest-given1   every step / step 1 only / steps 2-4 only
            condition coordinate 0 on 1
  grid-h2, grid-h8          step sizes from h0 = 2 / 8 (growth 1.4; default h0 = 0.5)
  grid-tail4                steps 2-4 on [-4, 4] (default [-5, 5])
  grid-bins96, grid-k384, grid-k512   96 bins / 384 / 512 rows
  grid-k512-smooth1e-3, -1e-4, -1e-5, grid-k256-smooth1e-3   512 / 256 rows with the smoothness
            prior s * sum |row_{r+1} - row_r|^2 on the table (`GridRQSpline(smoothness=s)`)

Generated sets train on their `train_size` points (20,000; rose and tree 500,000, JKO-iFlow's own
training set); the rose and tree rows measured before that default used 20,000 (`--num-train 20000`).

Hyper-parameters are chosen on a validation sample (its own seed); the test NLL is reported beside
it and never used to choose. Medians over seeds.

    flock /tmp/bench.lock python benchmarks/bench_jko_recipes.py --seeds 0 1 2                 # ODE blocks
    flock /tmp/bench.lock python benchmarks/bench_jko_recipes.py --kind spline --seeds 0 1 2   # spline steps
    flock /tmp/bench.lock python benchmarks/bench_jko_recipes.py --kind coupling --seeds 0 1   # coupling steps
    flock /tmp/bench.lock python benchmarks/bench_jko_recipes.py --kind grid --seeds 0 --variants grid-1layer-b1024-bins64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from jko_plugin import JKOTrainer, StepSchedule, TimeBudget, make_flow
from jko_plugin.datasets import get_dataset, train_test_split
from jko_plugin.metrics import nll, wasserstein2
from jko_plugin.steps.block import EXACT_MAP_MAX_DIM
from jko_plugin.steps.normalize import Standardize
from jko_plugin.workflows import ode_density

from bench_rq_spline import set_evaluation

VARIANTS = {
    "default": dict(flow=dict(hidden=(64, 64), steps=2), trainer=dict(), weights=None, passes=1),
    "front": dict(flow=dict(hidden=(64, 64), steps=2), trainer=dict(), weights=(3, 1, 1, 1, 1, 1), passes=1),
    "iflow": dict(
        flow=dict(hidden=(128, 128, 128), steps=3, activation="softplus", time_dependent=False),
        trainer=dict(warm_start=True),
        weights=None,
        passes=1,
    ),
    "reparam": dict(
        flow=dict(hidden=(64, 64), steps=2), trainer=dict(adapt=("reparametrize",)), weights=None, passes=2
    ),
    "odedens": dict(
        flow=dict(hidden=(64, 64), steps=2, density="ode"), trainer=dict(), weights=None, passes=1
    ),
    "front-odedens": dict(
        flow=dict(hidden=(64, 64), steps=2, density="ode"),
        trainer=dict(),
        weights=(3, 1, 1, 1, 1, 1),
        passes=1,
    ),
    "checks": dict(flow=dict(hidden=(64, 64), steps=2), trainer=dict(step_checks=10), weights=None, passes=1),
    "front-checks": dict(
        flow=dict(hidden=(64, 64), steps=2), trainer=dict(step_checks=10), weights=(3, 1, 1, 1, 1, 1), passes=1
    ),
    "front5-checks": dict(
        flow=dict(hidden=(64, 64), steps=2), trainer=dict(step_checks=10), weights=(5, 1, 1, 1, 1, 1), passes=1
    ),
    "odedens-checks": dict(
        flow=dict(hidden=(64, 64), steps=2, density="ode"), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "front-odedens-checks": dict(
        flow=dict(hidden=(64, 64), steps=2, density="ode"),
        trainer=dict(step_checks=10),
        weights=(3, 1, 1, 1, 1, 1),
        passes=1,
    ),
    "front-checks-rk1": dict(
        flow=dict(hidden=(64, 64), steps=1), trainer=dict(step_checks=10), weights=(3, 1, 1, 1, 1, 1), passes=1
    ),
    "front-checks-wide": dict(
        flow=dict(hidden=(128, 128), steps=2), trainer=dict(step_checks=10), weights=(3, 1, 1, 1, 1, 1), passes=1
    ),
    # front-checks with one trainer setting changed (learning rate or batch)
    **{
        f"front-checks-{name}": dict(
            flow=dict(hidden=(64, 64), steps=2),
            trainer=dict(step_checks=10, **setting),
            weights=(3, 1, 1, 1, 1, 1),
            passes=1,
        )
        for name, setting in [
            ("lr6e3", dict(lr=6e-3)),
            ("lr1e2", dict(lr=1e-2)),
            ("lr2e2", dict(lr=2e-2)),
            ("lr1.5e3", dict(lr=1.5e-3)),
            ("b1024", dict(batch_size=1024)),
            ("b256", dict(batch_size=256)),
        ]
    },
    "front-checks-lr1e2-fixedplan": dict(
        flow=dict(hidden=(64, 64), steps=2),
        trainer=dict(step_checks=10, lr=1e-2),
        weights=(3, 1, 1, 1, 1, 1),
        passes=1,
        revise=False,
    ),
    # compare's `jko` with one network or trace setting changed (gmm16, where it trailed I-CFM)
    **{
        f"front-checks-lr1e2-{name}": dict(
            flow={"hidden": (64, 64), "steps": 2, "density": "ode", **setting},
            trainer=dict(step_checks=10, lr=1e-2),
            weights=(3, 1, 1, 1, 1, 1),
            passes=1,
        )
        for name, setting in [
            ("ode", {}),
            ("silu", dict(activation="silu")),
            ("softplus", dict(activation="softplus")),
            ("deep", dict(hidden=(64, 64, 64))),
            ("probes2", dict(num_probes=2)),
            ("silu-deep", dict(activation="silu", hidden=(64, 64, 64))),
            ("silu-wide", dict(activation="silu", hidden=(128, 128))),
        ]
    },
    "front-checks-4": dict(
        num_blocks=4,
        flow=dict(hidden=(64, 64), steps=2),
        trainer=dict(step_checks=10),
        weights=(3, 1, 1, 1),
        passes=1,
    ),
    "iflow-front-checks": dict(
        flow=dict(hidden=(128, 128, 128), steps=3, activation="softplus", time_dependent=False),
        trainer=dict(step_checks=10, warm_start=True),
        weights=(3, 1, 1, 1, 1, 1),
        passes=1,
    ),
}
# compare's `jko` in d > 3 (3 x 64 SiLU, lr 1e-2, ODE density) compiled, and with one setting changed
_JKO_COMPILED = dict(
    flow=dict(hidden=(64, 64, 64), steps=2, density="ode", activation="silu"),
    trainer=dict(step_checks=10, lr=1e-2, compile=True),
    weights=(3, 1, 1, 1, 1, 1),
    passes=1,
)
VARIANTS["jko-compiled"] = _JKO_COMPILED
VARIANTS["jko-compiled-4"] = {**_JKO_COMPILED, "num_blocks": 4, "weights": (3, 1, 1, 1)}
VARIANTS["jko-compiled-wide"] = {**_JKO_COMPILED, "flow": {**_JKO_COMPILED["flow"], "hidden": (128, 128, 128)}}
VARIANTS["jko-compiled-map"] = {**_JKO_COMPILED, "flow": {**_JKO_COMPILED["flow"], "density": "map"}}
VARIANTS["jko-compiled-steps4"] = {**_JKO_COMPILED, "flow": {**_JKO_COMPILED["flow"], "steps": 4}}
VARIANTS["jko-compiled-steps3"] = {**_JKO_COMPILED, "flow": {**_JKO_COMPILED["flow"], "steps": 3}}
for _wd in ("1e-3", "1e-2"):
    VARIANTS[f"jko-compiled-steps3-adamw{_wd}"] = {
        **VARIANTS["jko-compiled-steps3"],
        "trainer": {**_JKO_COMPILED["trainer"], "optimizer": "adamw", "weight_decay": float(_wd)},
    }
VARIANTS["jko-compiled-steps3-4"] = {**VARIANTS["jko-compiled-steps3"], "num_blocks": 4, "weights": (3, 1, 1, 1)}
VARIANTS["jko-compiled-steps3-wide"] = {
    **VARIANTS["jko-compiled-steps3"],
    "flow": {**VARIANTS["jko-compiled-steps3"]["flow"], "hidden": (128, 128, 128)},
}
VARIANTS["jko-compiled-steps3-b1024"] = {
    **VARIANTS["jko-compiled-steps3"],
    "trainer": {**_JKO_COMPILED["trainer"], "batch_size": 1024},
}
VARIANTS["jko-compiled-steps3-lr2e2"] = {**VARIANTS["jko-compiled-steps3"], "trainer": {**_JKO_COMPILED["trainer"], "lr": 2e-2}}
for _decay in ("0.99", "0.999"):  # an EMA of each step's weights (TrainerOptions.ema)
    VARIANTS[f"jko-compiled-steps3-ema{_decay[2:]}"] = {
        **VARIANTS["jko-compiled-steps3"],
        "trainer": {**_JKO_COMPILED["trainer"], "ema": float(_decay)},
    }
# compare's `jko` in 2-D (2 x 64 tanh, exact trace, ODE density, lr 1e-2) with 2 and 3 RK4 steps
for _steps in (2, 3):
    VARIANTS[f"jko-2d-steps{_steps}"] = dict(
        flow=dict(hidden=(64, 64), steps=_steps, density="ode"),
        trainer=dict(step_checks=10, lr=1e-2),
        weights=(3, 1, 1, 1, 1, 1),
        passes=1,
    )
# the same with the exact density of the trained 3-step map (training, sampling and scoring on it)
VARIANTS["jko-2d-steps3-map"] = {**VARIANTS["jko-2d-steps3"], "flow": dict(hidden=(64, 64), steps=3, density="map")}
# Whitened instead of standardised per column: a fixed full-covariance affine layer (Whiten below).
VARIANTS["jko-compiled-steps3-whiten"] = {**VARIANTS["jko-compiled-steps3"], "whiten": True}
VARIANTS["jko-compiled-b1024"] = {**_JKO_COMPILED, "trainer": {**_JKO_COMPILED["trainer"], "batch_size": 1024}}
#: ``--kind spline``: the same question for spline JKO steps (``jko-spline``: 4 steps of 2
#: autoregressive RQ-spline layers), on the 2-D jobs where it is the best JKO flow.
SPLINE_VARIANTS = {
    "spline": dict(num_blocks=4, flow=dict(layers=2, bins=8), trainer=dict(), weights=None, passes=1),
    "spline-front": dict(num_blocks=4, flow=dict(layers=2, bins=8), trainer=dict(), weights=(3, 1, 1, 1), passes=1),
    "spline-6": dict(num_blocks=6, flow=dict(layers=2, bins=8), trainer=dict(), weights=None, passes=1),
    "spline-wide": dict(
        num_blocks=4, flow=dict(layers=2, hidden=128, bins=8), trainer=dict(), weights=None, passes=1
    ),
    "spline-checks": dict(num_blocks=4, flow=dict(layers=2, bins=8), trainer=dict(step_checks=10), weights=None, passes=1),
    "spline-bins16-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=16), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins32-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=32), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins64-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins64-front-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64), trainer=dict(step_checks=10), weights=(3, 1, 1, 1), passes=1
    ),
    "spline-bins64-tb3-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64, tail_bound=3.0), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins16-tb3first-checks": dict(
        num_blocks=4,
        flow=dict(layers=2, bins=16),
        first=dict(tail_bound=3.0),
        trainer=dict(step_checks=10),
        weights=None,
        passes=1,
    ),
    "spline-bins128-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=128), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins128-tb3-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=128, tail_bound=3.0), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-bins64-front-lr5e3-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64), trainer=dict(step_checks=10, lr=5e-3), weights=(3, 1, 1, 1), passes=1
    ),
    "spline-bins64-front-lr1.5e3-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64), trainer=dict(step_checks=10, lr=1.5e-3), weights=(3, 1, 1, 1), passes=1
    ),
    "spline-bins64-front-tb3-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64, tail_bound=3.0), trainer=dict(step_checks=10), weights=(3, 1, 1, 1), passes=1
    ),
    "spline-bins64-front-tb3first-checks": dict(
        num_blocks=4,
        flow=dict(layers=2, bins=64),
        first=dict(tail_bound=3.0),
        trainer=dict(step_checks=10),
        weights=(3, 1, 1, 1),
        passes=1,
    ),
    "spline-bins64-front-tb3first-b256-checks": dict(
        num_blocks=4,
        flow=dict(layers=2, bins=64),
        first=dict(tail_bound=3.0),
        trainer=dict(step_checks=10, batch_size=256),
        weights=(3, 1, 1, 1),
        passes=1,
    ),
    **{
        f"spline-bins64-{n}steps-front-tb3first-checks": dict(
            num_blocks=n,
            flow=dict(layers=2, bins=64),
            first=dict(tail_bound=3.0),
            trainer=dict(step_checks=10),
            weights=(3,) + (1,) * (n - 1),
            passes=1,
        )
        for n in (2, 3)
    },
    "spline-bins64-w4211-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=64), trainer=dict(step_checks=10), weights=(4, 2, 1, 1), passes=1
    ),
    "spline-bins64-front-wide-checks": dict(
        num_blocks=4, flow=dict(layers=2, hidden=96, bins=64), trainer=dict(step_checks=10), weights=(3, 1, 1, 1), passes=1
    ),
    "spline-bins64-b2048-checks": dict(
        num_blocks=4,
        flow=dict(layers=2, bins=64),
        trainer=dict(step_checks=10, batch_size=2048),
        weights=None,
        passes=1,
    ),
    "spline-6-bins16-checks": dict(
        num_blocks=6, flow=dict(layers=2, bins=16), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-lu-checks": dict(
        num_blocks=4, flow=dict(layers=2, bins=8, mix="lu"), trainer=dict(step_checks=10), weights=None, passes=1
    ),
    "spline-wide-bins16-checks": dict(
        num_blocks=4, flow=dict(layers=2, hidden=128, bins=16), trainer=dict(step_checks=10), weights=None, passes=1
    ),
}
# The 2-D picture recipe trained through torch.compile (TrainerOptions.compile): the same model.
SPLINE_VARIANTS["spline-bins64-front-tb3first-compiled-checks"] = {
    **SPLINE_VARIANTS["spline-bins64-front-tb3first-checks"],
    "trainer": dict(step_checks=10, compile=True),
}
# Each recipe again with normflows' own spline evaluation (masked indexing) instead of rq_spline's.
for _name in ("spline-bins64-front-tb3first-checks", "spline-bins16-tb3first-checks"):
    SPLINE_VARIANTS[_name.replace("-checks", "-nfspline-checks")] = {
        **SPLINE_VARIANTS[_name],
        "normflows_spline": True,
    }
#: ``--kind coupling``: coupling spline steps (``jko-coupling``, the default kind above d = 16) on
#: digits (d = 64), where the alternating masks split the coordinates the same way in every layer.
_CHECKS = dict(step_checks=10)
COUPLING_VARIANTS = {
    "coupling-checks": dict(num_blocks=4, flow=dict(layers=2), trainer=_CHECKS, weights=None, passes=1),
    "coupling-permute-checks": dict(
        num_blocks=4, flow=dict(layers=2, mix="permute"), trainer=_CHECKS, weights=None, passes=1
    ),
    "coupling-lu-checks": dict(num_blocks=4, flow=dict(layers=2, mix="lu"), trainer=_CHECKS, weights=None, passes=1),
    "coupling-4layers-checks": dict(num_blocks=4, flow=dict(layers=4), trainer=_CHECKS, weights=None, passes=1),
    "coupling-lu-4layers-checks": dict(
        num_blocks=4, flow=dict(layers=4, mix="lu"), trainer=_CHECKS, weights=None, passes=1
    ),
}
#: ``--kind grid``: 2-D spline steps conditioned through a table (``GridRQSpline``) on the pictures.
def _grid(
    *, layers=1, bins=64, knots=256, lr=1e-2, batch_size=1024, read_at="data", steps=4, given=0, first_given=None,
    tail_bound=5.0, h0=None, smoothness=0.0, marginal_bins=None, smoothness_norm="l2", **trainer,
):
    """A grid variant: 4 steps (or ``steps``), step 1 with 3 shares and on [-3, 3], checks."""
    first = dict(tail_bound=3.0) | ({} if first_given is None else dict(given=first_given))
    return dict(
        num_blocks=steps,
        first=first,
        weights=(3,) + (1,) * (steps - 1),
        passes=1,
        flow=dict(layers=layers, bins=bins, knots=knots, read_at=read_at, given=given, tail_bound=tail_bound,
            smoothness=smoothness, marginal_bins=marginal_bins, smoothness_norm=smoothness_norm),
        **({} if h0 is None else dict(schedule=dict(h0=h0))),
        trainer=dict(step_checks=10, lr=lr, batch_size=batch_size, **trainer),
    )


_B128 = dict(bins=128, knots=128, batch_size=512)  # the first recipes' table and batches
GRID_VARIANTS = {
    "grid": _grid(layers=2, **_B128),
    "grid-1layer": _grid(**_B128),
    "grid-lr3e-3": _grid(layers=2, **_B128, lr=3e-3),
    "grid-b1024": _grid(layers=2, **{**_B128, "batch_size": 1024}),
    "grid-k256": _grid(layers=2, **{**_B128, "knots": 256}),
    "grid-1layer-k256": _grid(**{**_B128, "knots": 256}),
    "grid-1layer-k64": _grid(**{**_B128, "knots": 64}),
    "grid-1layer-lr3e-3": _grid(**_B128, lr=3e-3),
    "grid-1layer-b1024": _grid(**{**_B128, "batch_size": 1024}),
    "grid-1layer-bins256": _grid(**{**_B128, "bins": 256}),
    "grid-1layer-b2048": _grid(**{**_B128, "batch_size": 2048}),
    "grid-1layer-b1024-compiled": _grid(**{**_B128, "batch_size": 1024}, compile=True),
    "grid-1layer-b1024-bins64": _grid(knots=128),
    "grid-1layer-b1024-bins32": _grid(bins=32, knots=128),
    "grid-1layer-b1024-bins64-k192": _grid(knots=192),
    "grid-1layer-b1024-bins64-6steps": _grid(knots=128, steps=6),
    "grid-1layer-b1024-bins64-latent": _grid(knots=128, read_at="latent"),
    "grid-1layer-b1024-bins64-k256": _grid(),  # jko-grid's recipe until k512 with the prior won
    "grid-1layer-b1024-bins64-k384": _grid(knots=384),
    "grid-1layer-b1024-bins64-k512": _grid(knots=512),
    "grid-1layer-b1024-bins64-k256-latent": _grid(read_at="latent"),
    "grid-given1": _grid(given=1),  # every step conditions coordinate 0 on 1
    "grid-given1-first": _grid(first_given=1),  # step 1 conditions 0 on 1, the others 1 on 0
    "grid-rest-given1": _grid(given=1, first_given=0),  # step 1 conditions 1 on 0, the others 0 on 1
    "grid-bins96": _grid(bins=96),
    "grid-k384": _grid(knots=384),  # as grid-1layer-b1024-bins64-k384, with the faster layer (below)
    "grid-k512": _grid(knots=512),
    "grid-k512-smooth1e-3": _grid(knots=512, smoothness=1e-3),  # the prior on neighbouring rows
    "grid-k512-smooth1e-4": _grid(knots=512, smoothness=1e-4),
    "grid-k512-smooth1e-5": _grid(knots=512, smoothness=1e-5),  # jko-grid's recipe
    "grid-k512-smooth3e-5": _grid(knots=512, smoothness=3e-5),
    # the tables' total variation as the prior (smoothness_norm="l1")
    "grid-k512-tv1e-6": _grid(knots=512, smoothness=1e-6, smoothness_norm="l1"),
    "grid-k512-tv1e-5": _grid(knots=512, smoothness=1e-5, smoothness_norm="l1"),
    "grid-k512-tv3e-5": _grid(knots=512, smoothness=3e-5, smoothness_norm="l1"),
    "grid-k1024-tv1e-5": _grid(knots=1024, smoothness=1e-5, smoothness_norm="l1"),
    "grid-k512-tv1e-5-mb256": _grid(knots=512, smoothness=1e-5, smoothness_norm="l1", marginal_bins=256),
    "grid-k512-tv5e-6-mb256": _grid(knots=512, smoothness=5e-6, smoothness_norm="l1", marginal_bins=256),
    "grid-k512-tv2e-5-mb256": _grid(knots=512, smoothness=2e-5, smoothness_norm="l1", marginal_bins=256),
    "grid-k768-smooth1e-4": _grid(knots=768, smoothness=1e-4),
    "grid-k512-smooth1e-5-ema": _grid(knots=512, smoothness=1e-5, ema=0.999),  # the checks score the average
    "grid-k512-smooth1e-5-5steps": _grid(knots=512, smoothness=1e-5, steps=5),
    "grid-k512-smooth1e-5-b2048": _grid(knots=512, smoothness=1e-5, batch_size=2048),
    "grid-k512-smooth1e-5-mb256": _grid(knots=512, smoothness=1e-5, marginal_bins=256),  # finer own spline
    "grid-k512-smooth1e-5-mb512": _grid(knots=512, smoothness=1e-5, marginal_bins=512),
    "grid-k256-smooth1e-3": _grid(smoothness=1e-3),
    "grid-h2": _grid(h0=2.0),  # step sizes 2, 2.8, 3.9, 5.5
    "grid-h8": _grid(h0=8.0),
    "grid-tail4": _grid(tail_bound=4.0),  # steps 2-4 on [-4, 4]
    "grid-bins64": _grid(layers=2, **{**_B128, "bins": 64}),
}
BUDGETS = {
    "moons": 60.0,
    "gmm16": 120.0,
    "gmm4": 60.0,
    "gmm8": 60.0,
    "checkerboard": 30.0,
    "rose": 300.0,
    "tree": 300.0,
    "digits": 120.0,
}
class Whiten(Standardize):
    """``x = loc + L z`` with ``L`` the Cholesky factor of the training covariance: the data's
    correlations removed as well as its scales (a benchmark question, not a library layer)."""

    @classmethod
    def fit_full(cls, x: torch.Tensor) -> Whiten:
        data = x.double()
        layer = cls(x.shape[1], data.mean(0).float(), data.std(0).float())
        tril = torch.linalg.cholesky(torch.cov(data.T))
        layer.register_buffer("tril", tril.float())
        return layer

    def forward(self, z, context=None):
        log_det = z.new_full((z.shape[0],), float(torch.log(torch.diagonal(self.tril.double())).sum()))
        return self.loc + z @ self.tril.T, log_det

    def inverse(self, x, context=None):
        log_det = x.new_full((x.shape[0],), -float(torch.log(torch.diagonal(self.tril.double())).sum()))
        z = torch.linalg.solve_triangular(self.tril, (x - self.loc).T, upper=False).T
        return z, log_det


class FixedPlan(TimeBudget):
    """A ``TimeBudget`` whose blocks keep the length planned before training (no ``revise``)."""

    revise = None


KINDS = {
    "ode": (VARIANTS, ["moons", "gmm16"]),
    "spline": (SPLINE_VARIANTS, ["checkerboard", "moons"]),
    "coupling": (COUPLING_VARIANTS, ["digits"]),
    "grid": (GRID_VARIANTS, ["tree", "rose"]),
}
NUM_BLOCKS = 6
#: What each finished run prints, one JSON line.
LOG_KEYS = ("dataset", "variant", "seed", "val_nll", "test_nll", "train_nll", "w2", "train_seconds")


def run(dataset: str, variant: str, seed: int, budget: float, num_train: int | None = None) -> dict:
    ds = get_dataset(dataset)
    if ds.size is None:  # the dataset's own training size by default, as compare draws it
        x_train = ds.sample(num_train or ds.train_size, seed=seed)
        x_val = ds.sample(4000, seed=seed + 100)
        x_test = ds.sample(4000, seed=seed + 1)
        x_sel = ds.sample(4000, seed=seed + 200)
    else:  # compare's 80/20 split; validation and selection (10%, as compare) points from its training part
        x_train, x_test = train_test_split(ds.sample(ds.size, seed=seed), 0.2, seed=seed)
        x_train, x_val = train_test_split(x_train, 0.2, seed=seed + 100)
        x_train, x_sel = train_test_split(x_train, 0.1, seed=seed + 200)
    spec = {**VARIANTS, **SPLINE_VARIANTS, **COUPLING_VARIANTS, **GRID_VARIANTS}[variant]
    block = "ode" if variant in VARIANTS else "coupling" if variant in COUPLING_VARIANTS else "spline"
    block = "grid" if variant in GRID_VARIANTS else block
    num_blocks = spec.get("num_blocks", NUM_BLOCKS)
    torch.manual_seed(seed)
    dim = x_train.shape[1]
    options = dict(spec["flow"])
    if block == "ode":
        # tanh unless a variant names another: the MLP every variant here was measured with
        trace = "exact" if dim <= 3 else "hutchinson"
        options = {"density": "auto", "trace": trace, "activation": "tanh", **options}
    flow = make_flow(dim, num_blocks, block=block, first=spec.get("first"), **options)
    if spec.get("normflows_spline"):
        set_evaluation(flow, ours=False)
    flow.flows.append(Whiten.fit_full(x_train) if spec.get("whiten") else Standardize.fit(x_train))
    start = time.perf_counter()
    trainer = JKOTrainer(
        flow,
        StepSchedule.geometric(num_blocks, **spec.get("schedule", {})),
        seed=seed,
        progress=False,
        **{"batch_size": 512, "lr": 3e-3, **spec["trainer"]},
    )
    # With step_checks the steps choose their iterates on x_sel, so x_val stays unseen by training.
    x_sel = x_sel if trainer.options.step_checks else x_val
    costs = trainer.estimate_costs(x_train, x_sel)
    weights = spec["weights"] if spec["passes"] == 1 else None
    budget_type = TimeBudget if spec.get("revise", True) else FixedPlan
    plan = budget_type(budget, costs, num_blocks * spec["passes"], start=start, weights=weights)
    history = trainer.fit(x_train, x_sel, plan=plan)
    seconds = time.perf_counter() - start
    flow.eval()
    # No autograd graph while sampling: in eval mode an ODE block computes the exact trace for
    # log q (d tangents per stage), and with a graph kept across 6 blocks x 8 steps that held more
    # than 24 GiB for the iflow variant in d = 16 (0.4 GiB a second, sampling 4,000 points).
    with torch.no_grad(), torch.random.fork_rng(), ode_density(flow):
        torch.manual_seed(seed + 7)
        samples = flow.sample(4000)[0].detach()
        val_nll, test_nll = nll(flow, x_val), nll(flow, x_test)
        train_nll = nll(flow, x_train[:4000])  # against test_nll: how far the fit generalises
    true = float(-ds.log_prob(x_test).double().mean()) if ds.log_prob is not None else None
    return {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "val_nll": val_nll,
        "test_nll": test_nll,
        "train_nll": train_nll,
        "true_nll": true,
        "num_train": int(x_train.shape[0]),
        "w2": wasserstein2(samples, x_test),
        "train_seconds": seconds,
        "iterations": [b.iterations for b in history.blocks],
        "kept_iterations": [b.kept_iteration for b in history.blocks],
        "inversion_error": max(b.inversion_error for b in history.blocks),
    }


def variants(dataset: str, names: list[str]) -> list[str]:
    """``names`` without those that equal another on ``dataset`` (the ``odedens`` ones above d = 3)."""
    dim = get_dataset(dataset).sample(1, seed=0).shape[1]
    return [v for v in names if not ("odedens" in v and dim > EXACT_MAP_MAX_DIM)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kind", choices=sorted(KINDS), default="ode")
    parser.add_argument("--datasets", nargs="+")
    parser.add_argument("--variants", nargs="+")
    parser.add_argument("--out")
    parser.add_argument(
        "--num-train", type=int, help="training points of a generated set (default: its train_size)"
    )
    parser.add_argument("--budget", type=float, help="seconds per run (default: the dataset's, BUDGETS)")
    args = parser.parse_args()
    table, datasets = KINDS[args.kind]
    args.datasets = args.datasets or datasets
    args.variants = args.variants or list(table)
    suffix = "" if args.kind == "ode" else f"_{args.kind}"
    args.out = args.out or f"benchmarks/results/jko_recipes{suffix}.json"
    torch.set_num_threads(2)
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            for variant in variants(dataset, args.variants):
                row = run(dataset, variant, seed, args.budget or BUDGETS[dataset], args.num_train)
                rows.append(row)
                print(json.dumps({k: row[k] for k in LOG_KEYS}), flush=True)
                # every finished row kept, should a later variant fail
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))
    print(
        f"\n{'dataset':>8} {'variant':>8} {'val NLL':>8} {'test NLL':>8} {'true':>7} {'W2':>7} {'train s':>7}   (medians over seeds {args.seeds})"
    )
    summary = {}
    for dataset in args.datasets:
        for variant in variants(dataset, args.variants):
            sel = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            med = {
                k: statistics.median(r[k] for r in sel)
                for k in ("val_nll", "test_nll", "w2", "train_seconds")
            }
            summary[f"{dataset}/{variant}"] = med
            true = sel[0]["true_nll"]
            print(
                f"{dataset:>8} {variant:>8} {med['val_nll']:8.3f} {med['test_nll']:8.3f} "
                f"{(true if true is not None else float('nan')):7.3f} {med['w2']:7.4f} {med['train_seconds']:7.1f}"
            )
        best = min(variants(dataset, args.variants), key=lambda v: summary[f"{dataset}/{v}"]["val_nll"])
        print(f"{dataset}: best on validation NLL: {best}")
        summary[f"{dataset}/best_on_validation"] = best
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    budgets = {d: args.budget or BUDGETS[d] for d in args.datasets}
    Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary, "budgets": budgets}, indent=1))


if __name__ == "__main__":
    main()
