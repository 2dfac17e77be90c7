"""Train one ``bench_jko_recipes`` variant, then score its test NLL with 1..32 RK4 steps per block:
how far the trained discretisation's log-det strays from the ODE's density (generated sets only:
the test points are redrawn as the harness draws them).

    python benchmarks/bench_solver_gap.py DATASET VARIANT SEED BUDGET_SECONDS
"""

import json
import sys

import torch

sys.path.insert(0, "benchmarks")
import bench_jko_recipes as b  # noqa: E402

from jko_plugin import solver_steps  # noqa: E402

torch.set_num_threads(2)
trained = {}
fit = b.JKOTrainer.fit


def keep_flow(self, *args, **kwargs):  # the harness returns numbers only: keep the trained flow
    trained["flow"] = self.flow
    return fit(self, *args, **kwargs)


b.JKOTrainer.fit = keep_flow
ds, variant, seed, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b.BUDGETS[ds] = budget
row = b.run(ds, variant, seed, budget)
keys = ("val_nll", "test_nll", "train_nll", "w2", "iterations", "kept_iterations")
print(json.dumps({k: row[k] for k in keys}))
flow = trained["flow"].eval()
x_test = b.get_dataset(ds).sample(4000, seed=seed + 1)
for steps in (1, 2, 4, 8, 16, 32):
    with torch.no_grad(), solver_steps(flow, steps):
        print(steps, float(-flow.log_prob(x_test).mean()), flush=True)
