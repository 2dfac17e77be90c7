"""Writes a real user table in raw units for `jko-flow compare`: scikit-learn's bundled diabetes data.

442 patients, the 9 continuous columns of `load_diabetes(scaled=False)` in their own units (age in
years, BMI, blood pressure, six serum measurements; means 4 to 190, standard deviations 0.5 to 35).
The binary `sex` column is dropped (a discrete variable: `jko-flow` warns about it), and the columns
that hold whole numbers are dequantised with U(0, 1) noise, as the warning advises. Offline: the data
ships with scikit-learn.

    python benchmarks/make_user_table.py --out benchmarks/data/diabetes_raw.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/data/diabetes_raw.csv")
    args = parser.parse_args()
    data = load_diabetes(scaled=False)
    keep = [i for i, name in enumerate(data.feature_names) if name != "sex"]
    x = data.data[:, keep].astype(np.float64)
    rng = np.random.default_rng(0)
    for j in range(x.shape[1]):
        if np.all(x[:, j] == np.round(x[:, j])):
            x[:, j] += rng.uniform(size=x.shape[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join(data.feature_names[i] for i in keep)
    np.savetxt(out, x, delimiter=",", header=header, comments="", fmt="%.6f")
    print(f"wrote {out}: {x.shape[0]} rows x {x.shape[1]} columns; means {np.round(x.mean(0), 1).tolist()}")


if __name__ == "__main__":
    main()
