"""`jko-flow compare` with one more row, `jko-tanh`: compare's `jko` with the velocity MLP it had
in every dimension before `default_velocity` (2 x 64, tanh; now 3 x 64 SiLU above d = 3), so that
the two networks meet in one run on the same splits and budget.

    flock /tmp/bench.lock python benchmarks/compare_velocity.py --dataset benchmarks/data/diabetes_raw.csv \\
        --methods jko,jko-tanh --budget-seconds 120 --seeds 0,1,2 --out benchmarks/results/ode_net/diabetes

Every other argument is `jko-flow compare`'s.
"""

import sys

from jko_plugin.cli import main
from jko_plugin.compare.methods import METHODS, JKOMethod

METHODS["jko-tanh"] = JKOMethod(
    "jko-tanh", "ode", "compare's jko with a 2 x 64 tanh velocity MLP", hidden=(64, 64), activation="tanh"
)

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
