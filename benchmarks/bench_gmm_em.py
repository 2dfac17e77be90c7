"""The EM Gaussian mixture on its own, on compare's splits: how close to the true NLL this data
allows a density model to come (BENCHMARKS.md s.4.0, "gmm16 within 0.15").

    python benchmarks/bench_gmm_em.py --dataset gmm16 --seeds 0,1,2

Per seed: compare's training and test points, its standardisation and selection rows;
``choose_clusters`` picks the number of components on the selection rows as ``jko-mixture`` does;
the test NLL is in data units. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jko_plugin.compare.methods import METHODS
from jko_plugin.compare.runner import _load
from jko_plugin.mixture import choose_clusters
from jko_plugin.steps.normalize import Standardize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="gmm16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results/equal_budget/gmm16_mixture/em_alone.json")
    args = parser.parse_args()
    rows = []
    print("| seed | components | test NLL | true NLL | gap |\n|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        _, x_train, x_test, ds = _load(args.dataset, None, 4000, seed, None)  # compare's default num_test
        norm = Standardize.fit(x_train, warn=False)
        with torch.no_grad():
            z, _ = norm.inverse(x_train)
            z_test, log_det = norm.inverse(x_test)
        z_fit, z_sel = METHODS["jko-mixture"].selection_split(z, seed)
        gmm, scores = choose_clusters(z_fit, z_sel, seed=seed)
        nll = float(-(gmm.log_prob(z_test).double() + log_det.double()).mean())
        true = float(-ds.log_prob(x_test).double().mean())
        rows.append(
            dict(seed=seed, components=gmm.num_components, test_nll=nll, true_nll=true, selection=scores)
        )
        print(f"| {seed} | {gmm.num_components} | {nll:.3f} | {true:.3f} | {nll - true:+.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
