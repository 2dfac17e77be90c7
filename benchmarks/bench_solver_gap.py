"""gmm16 (or any set): train one bench_jko_recipes variant, then score its test NLL with 1..32 RK4
steps per block: how far the trained discretisation's log-det strays from the ODE's density.

    python benchmarks/bench_solver_gap.py DATASET VARIANT SEED BUDGET_SECONDS
"""
import sys, time, json, torch
sys.path.insert(0, "benchmarks")
import bench_jko_recipes as b
from jko_plugin.steps.block import JKOBlock
torch.set_num_threads(2)
saved = {}
# keep the flow: wrap JKOTrainer.fit to stash the flow
orig_fit = b.JKOTrainer.fit
def fit(self, *a, **k):
    saved["flow"] = self.flow
    return orig_fit(self, *a, **k)
b.JKOTrainer.fit = fit
ds, variant, seed, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b.BUDGETS[ds] = budget
row = b.run(ds, variant, seed, budget)
print(json.dumps({k: row[k] for k in ("val_nll", "test_nll", "train_nll", "w2", "iterations", "kept_iterations")}))
flow = saved["flow"]; flow.eval()
d = b.get_dataset(ds); x_test = d.sample(4000, seed=seed + 1)
for steps in (1, 2, 4, 8, 16, 32):
    for blk in flow.flows:
        if isinstance(blk, JKOBlock): blk.steps = steps
    with torch.no_grad():
        print(steps, float(-flow.log_prob(x_test).mean()), flush=True)

