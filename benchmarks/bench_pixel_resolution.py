"""What the rose and tree targets ask: the NLL of the picture seen at a coarser resolution.

JKO-iFlow's 2-D pictures are mixtures of one Gaussian per pixel with a standard deviation of about
half a pixel spacing (`jko_plugin.datasets.pixels`). Widening every Gaussian by a factor k is the
picture blurred by a Gaussian of sqrt(k^2 - 1) times that width, about sqrt(k^2 - 1) / 2 pixels:
a model that resolves the picture only to that scale cannot score better than this blurred
density does (a blur is the best such model would be optimistic; it is the natural yardstick).
The table gives the exact held-out NLL of each blurred picture on compare's held-out points
(4000 points drawn with seed 1, as `jko-flow compare --seed 0` draws them) and, for each measured
NLL passed with --measured, the blur at which the exact density scores the same (linear
interpolation in k), so that a gap to the true NLL reads as a resolution in pixels.
No training; seconds on 2 cores. Prints a table and writes JSON.

    python benchmarks/bench_pixel_resolution.py [--measured rose=2.703 tree=2.411] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from jko_plugin.datasets.mixture import GaussianMixture
from jko_plugin.datasets.pixels import pixel_mixture

FACTORS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
# BENCHMARKS.md s.4: compare's jko-spline rows at 300 s (16 and 64 bins) and JKO-iFlow's published rose.
MEASURED = {"rose": (2.703, 2.626, 2.64), "tree": (2.411, 2.272)}


def blurred_nll(name: str, x: torch.Tensor, k: float) -> float:
    """Held-out NLL of picture ``name`` with every pixel Gaussian ``k`` times wider."""
    mix = pixel_mixture(name)
    wide = GaussianMixture(mix.means, torch.diag(mix.std * k).expand(len(mix.weights), 2, 2), mix.weights)
    return float(-torch.cat([wide.log_prob(c) for c in x.double().split(500)]).mean())


def blur_pixels(k: float) -> float:
    """Width of the added blur in pixel spacings (the pixel Gaussians' std is half a spacing)."""
    return math.sqrt(max(k * k - 1.0, 0.0)) / 2.0


def factor_at(nll: float, curve: list[tuple[float, float]]) -> float | None:
    """The k at which the blurred density's NLL equals ``nll`` (None off the measured range)."""
    for (k0, v0), (k1, v1) in zip(curve, curve[1:]):
        if v0 <= nll <= v1:
            return k0 + (k1 - k0) * (nll - v0) / (v1 - v0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", nargs="*", default=[], help="name=NLL pairs to place on the curve")
    parser.add_argument("--out", default="benchmarks/results/pixel_resolution.json")
    args = parser.parse_args()
    measured = {k: list(v) for k, v in MEASURED.items()}
    for item in args.measured:
        name, value = item.split("=")
        measured.setdefault(name, []).append(float(value))
    torch.set_num_threads(2)
    result = {}
    for name in ("rose", "tree"):
        x = pixel_mixture(name).sample(4000, seed=1)
        curve = [(k, blurred_nll(name, x, k)) for k in FACTORS]
        print(f"\n{name}: held-out NLL of the picture blurred by b pixels (true: b = 0)")
        print(f"{'k':>6} {'b px':>6} {'NLL':>7} {'gap':>7}")
        for k, v in curve:
            print(f"{k:6.2f} {blur_pixels(k):6.2f} {v:7.3f} {v - curve[0][1]:+7.3f}")
        placed = {}
        for nll in measured.get(name, []):
            k = factor_at(nll, curve)
            placed[str(nll)] = None if k is None else {"k": k, "blur_pixels": blur_pixels(k)}
            where = "off the curve" if k is None else f"k = {k:.2f}, a blur of {blur_pixels(k):.2f} pixels"
            print(f"  a test NLL of {nll:.3f} scores as the picture at {where}")
        result[name] = {
            "curve": [{"k": k, "blur_pixels": blur_pixels(k), "nll": v} for k, v in curve],
            "measured": placed,
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
