import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from jko_plugin.cli import main
from jko_plugin.datasets import (
    GaussianMixture,
    PixelMixture,
    get_dataset,
    load_dataset,
    pixel_image,
    pixel_mixture,
    rose,
    rose_log_prob,
    tree,
    tree_log_prob,
)

# The PNGs the packaged arrays were made from (tools/pack_pixel_images.py); absent on a clean clone.
SOURCE = Path(
    os.environ.get("JKO_IFLOW_2D", Path(__file__).resolve().parents[2] / "shared/data/jko-iflow-2d")
)
NAMES = ["rose", "tree"]


def pixel_index(mix, h, w):
    """Rows and columns (of the upside-down picture) of the mixture's means, inverted from linspace."""
    cols = ((mix.means[:, 0] + 4) * (w - 1) / 8).round().long()
    rows = ((mix.means[:, 1] + 4) * (h - 1) / 8).round().long()
    torch.testing.assert_close(mix.means[:, 0], torch.linspace(-4, 4, w, dtype=torch.float64)[cols])
    torch.testing.assert_close(mix.means[:, 1], torch.linspace(-4, 4, h, dtype=torch.float64)[rows])
    return rows, cols


# -- the data is the picture -------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_weights_are_the_picture_upside_down(name):
    grey = pixel_image(name)
    assert grey.dtype == np.uint8 and grey.ndim == 2
    mix = pixel_mixture(name)
    h, w = grey.shape
    rows, cols = pixel_index(mix, h, w)
    image = torch.zeros(h, w, dtype=torch.float64)
    image[rows, cols] = mix.weights
    assert len(set(zip(rows.tolist(), cols.tolist()))) == len(rows)  # one component per pixel
    dark = torch.from_numpy((grey.max() - grey[::-1].astype(np.float64)).copy())
    torch.testing.assert_close(image, dark / dark.sum(), atol=1e-15, rtol=1e-12)
    # JKO-iFlow's per-axis standard deviations 8 / w / 2 and 8 / h / 2
    torch.testing.assert_close(mix.std, torch.tensor([8 / w / 2, 8 / h / 2], dtype=torch.float64))
    covs = mix.scale_trils @ mix.scale_trils.transpose(-1, -2)
    torch.testing.assert_close(covs, torch.diag(mix.std**2).expand_as(covs))


@pytest.mark.parametrize("name", NAMES)
def test_flip_is_pillows_rotate_180_then_mirror(name):
    image = pytest.importorskip("PIL.Image")
    grey = pixel_image(name)
    jko = np.asarray(image.fromarray(grey).rotate(180).transpose(0))  # transpose(0): FLIP_LEFT_RIGHT
    np.testing.assert_array_equal(jko, grey[::-1])


@pytest.mark.parametrize("name", NAMES)
def test_packaged_arrays_are_the_pngs_through_jko_iflows_pipeline(name):
    image = pytest.importorskip("PIL.Image")
    png = SOURCE / f"img_{name}.png"
    if not png.exists():
        pytest.skip(f"{png} not here (set JKO_IFLOW_2D to the folder of the JKO-iFlow PNGs)")
    with image.open(png) as img:
        jko = np.asarray(img.rotate(180).transpose(0).convert("L"))  # as JKO-iFlow's inf_train_gen
    np.testing.assert_array_equal(pixel_image(name)[::-1], jko)


def test_tiny_picture_orientation_and_bad_input():
    # the dark top-left pixel of the picture as displayed lands at (x, y) = (-4, 4)
    mix = PixelMixture(np.array([[0, 255, 255, 255], [255, 255, 255, 255], [255, 255, 255, 200]]))
    torch.testing.assert_close(mix.means, torch.tensor([[4.0, -4.0], [-4.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(mix.weights, torch.tensor([55, 255], dtype=torch.float64) / 310)
    torch.testing.assert_close(mix.std, torch.tensor([1.0, 4 / 3], dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"grey must be a numeric \(h, w\) picture with h, w >= 2, got shape \(5,\)"
    ):
        PixelMixture(np.zeros(5))
    with pytest.raises(ValueError, match="grey must be finite and not constant"):
        PixelMixture(np.full((3, 3), 7))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\), got \(4, 3\)"):
        mix.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"picture must be one of \['rose', 'tree'\], got 'tulip'"):
        pixel_image("tulip")


# -- exact density -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_log_prob_is_the_full_mixture_sum(name):
    mix = pixel_mixture(name)
    gen = torch.Generator().manual_seed(0)
    far = torch.tensor([[100.0, -100.0], [4.3, 4.3], [-7.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    pts = torch.cat([mix.sample(80, seed=0).double(), torch.rand(60, 2, generator=gen) * 12 - 6, far])
    # GaussianMixture's full-covariance sum over every component: the independent reference
    ref = GaussianMixture.log_prob(mix, pts.double())
    got = mix.log_prob(pts)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-11)
    assert got.dtype == torch.float64 and mix.log_prob(pts.float()).dtype == torch.float32
    assert mix.log_prob(torch.tensor([[math.nan, 0.0]])).isnan().all()
    assert mix.log_prob(torch.tensor([[math.inf, 0.0]])).isneginf().all()
    assert mix.log_prob(torch.zeros(0, 2)).shape == (0,)


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_with_the_exact_moments(name):
    # Riemann sum on a grid through the pixel centres at half their spacing: step h about one
    # standard deviation s (h / s = w / (w - 1)), where the sum's error per axis is below
    # 2 exp(-2 pi^2 s^2 / h^2) ~ 1e-8 (measured: 1.3e-8 and 1.2e-8). Grid points further than 5
    # pixels (over 10 s) from every dark pixel are left out: they carry less than exp(-36) of mass.
    mix = pixel_mixture(name)
    h, w = mix.image.shape
    margin = 6
    dark = np.pad(mix.image[::-1] < mix.image.max(), margin)
    near = ndimage.distance_transform_edt(~dark) <= 5  # in pixels
    rows, cols = np.nonzero(
        np.repeat(np.repeat(near, 2, 0), 2, 1)[: 2 * dark.shape[0] - 1, : 2 * dark.shape[1] - 1]
    )
    pts = torch.from_numpy(
        np.stack([(cols / 2 - margin) * 8 / (w - 1) - 4, (rows / 2 - margin) * 8 / (h - 1) - 4], 1)
    )
    cell = (4 / (w - 1)) * (4 / (h - 1))
    p = mix.log_prob(pts).exp() * cell
    assert abs(float(p.sum()) - 1) < 1e-7
    mean = p @ pts
    torch.testing.assert_close(mean, mix.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        (pts - mean).T @ ((pts - mean) * p[:, None]), mix.covariance, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("name", NAMES)
def test_samples_have_the_mixtures_exact_moments(name):
    mix = pixel_mixture(name)
    x = mix.sample(200_000, seed=3).double()
    n = len(x)
    assert ((x.mean(0) - mix.mean).abs() < 5 * (mix.covariance.diagonal() / n).sqrt()).all()
    centred = x - mix.mean
    products = centred[:, :, None] * centred[:, None, :]
    err = products.mean(0) - mix.covariance
    assert (err.abs() < 5 * products.std(0) / math.sqrt(n)).all(), err


# -- registry and command line -----------------------------------------------------------------
def test_registry_and_reproducibility():
    for name, sample, log_prob in [("rose", rose, rose_log_prob), ("tree", tree, tree_log_prob)]:
        ds = get_dataset(name)
        assert (ds.name, ds.dim, ds.sample, ds.log_prob, ds.size) == (name, 2, sample, log_prob, None)
        x = load_dataset(name, 500, seed=7)
        assert x.shape == (500, 2) and x.dtype == torch.float32
        assert torch.equal(x, sample(500, seed=7)) and not torch.equal(x, sample(500, seed=8))
        assert x.abs().max() < 4.5  # the pictures span [-4, 4]^2 plus a few standard deviations


def test_compare_cli_on_rose_reports_the_true_nll(tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--dataset", "rose", "--methods", "cfm", "--steps", "2", "--num-train", "300"]
    assert main([*argv, "--num-test", "200", "--seed", "4", "--out", str(out)]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    assert record["dataset"] == "rose" and record["dim"] == 2
    true_nll = float(-rose_log_prob(load_dataset("rose", 200, seed=5).double()).mean())  # held out: seed + 1
    assert record["true_nll"] == pytest.approx(true_nll, abs=1e-6)
