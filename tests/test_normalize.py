"""Standardisation as a layer of the flow, and the columns it refuses or warns about."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from jko_plugin import make_flow
from jko_plugin.compare import METHODS, compare
from jko_plugin.compare.methods import Budget
from jko_plugin.compare.runner import in_data_units
from jko_plugin.datasets.files import check_columns
from jko_plugin.sampling.model import JKOFlowModel
from jko_plugin.sampling.pipeline import JKOFlowPipeline
from jko_plugin.steps.layers import build_layer, describe_layer
from jko_plugin.steps.normalize import Standardize

from .flowcheck import check_flow, jacobian_logdet


def raw_table(n=600, seed=0):
    """A table in raw units: means near 60, scales 0.6 to 2.3 (as a user's CSV)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]], dtype=torch.float64)
    return 60.0 + (z @ mix) * torch.tensor([2.3, 0.6, 1.4], dtype=torch.float64)


@pytest.mark.parametrize("robust", [False, True])
def test_round_trip_and_log_det_against_the_jacobian(robust):
    x = raw_table()
    norm = Standardize.fit(x, robust=robust).double()
    check_flow(norm, x, atol=1e-10)
    z, ld = norm.inverse(x)
    torch.testing.assert_close(
        ld[:5], jacobian_logdet(lambda u: norm.inverse(u)[0], x[:5]), rtol=0, atol=1e-12
    )
    if not robust:
        torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(z.std(0), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert norm.log_scale_sum == pytest.approx(float(torch.log(norm.scale).sum()), rel=1e-15)


def test_nll_in_data_units_is_the_normalised_nll_plus_the_log_det_exactly():
    x = raw_table()
    norm = Standardize.fit(x).double()
    flow = make_flow(3, 2, block="ode", hidden=(8,), steps=2).double()
    with torch.no_grad():
        inner = flow.log_prob(norm.inverse(x)[0])
        flow.flows.append(norm)  # data side
        outer = flow.log_prob(x)
    torch.testing.assert_close(outer, inner - norm.log_scale_sum, rtol=0, atol=1e-10)


def test_the_layer_is_saved_and_reloaded(tmp_path):
    x = raw_table().float()
    norm = Standardize.fit(x)
    rebuilt = build_layer(describe_layer(norm))
    rebuilt.load_state_dict(norm.state_dict())
    torch.testing.assert_close(rebuilt.inverse(x)[0], norm.inverse(x)[0], rtol=0, atol=0)
    flow = make_flow(3, 2, block="spline", hidden=8, layers=1)
    flow.flows.append(norm)
    pipe = JKOFlowPipeline.from_normflows(flow)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model.layer_boundaries == (0,)
    pipe.save_pretrained(tmp_path / "m")
    back = JKOFlowPipeline.from_pretrained(tmp_path / "m")
    back.set_progress_bar_config(disable=True)
    z = torch.randn(16, 3)
    with torch.no_grad():
        torch.testing.assert_close(back(latents=z).samples, flow.forward(z), rtol=0, atol=1e-5)
    assert isinstance(JKOFlowModel.from_normflows(flow).flows[-1], Standardize)


def test_constant_and_discrete_columns():
    x = raw_table(200).numpy()
    const = np.concatenate([x, np.full((200, 1), 3.0)], axis=1)
    with pytest.raises(ValueError, match="column 3 \\(every row is 3\\) is constant.*drop it"):
        Standardize.fit(torch.from_numpy(const))
    counts = np.concatenate([x, np.arange(200)[:, None] % 4], axis=1)
    notes = check_columns(torch.from_numpy(counts))
    assert len(notes) == 1 and "column 3 takes only 4 distinct values" in notes[0] and "U(0, 1)" in notes[0]
    with pytest.warns(UserWarning, match="looks discrete"):
        Standardize.fit(torch.from_numpy(counts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Standardize.fit(torch.from_numpy(x))  # continuous columns: no warning


def test_compare_scores_every_method_in_data_units():
    # The same method on raw data (standardised inside) and on standardised data differ by the log-det.
    x = raw_table(800)
    norm = Standardize.fit(x[:600]).double()
    method = METHODS["realnvp"]
    raw = in_data_units(
        method.train(norm.inverse(x[:600])[0].float(), x[600:].float(), Budget(steps=5), 0), norm.float()
    )
    inner = method.train(norm.inverse(x[:600])[0].float(), x[600:].float(), Budget(steps=5), 0)
    test = x[600:].float()
    with torch.no_grad():
        torch.testing.assert_close(
            raw.log_prob(test),
            inner.log_prob(norm.float().inverse(test)[0]) - norm.log_scale_sum,
            rtol=0,
            atol=1e-4,
        )
        gen = torch.Generator().manual_seed(0)
        mean = raw.sample(2000, gen).mean(0)
    assert torch.allclose(mean.double(), x[:600].mean(0), atol=1.0)  # samples come back in data units


def test_a_diverged_models_samples_stay_non_finite_in_data_units():
    # RealNVP diverged on a raw table (307 of 10,000 samples NaN): the comparison must record it,
    # not stop at the standardisation layer's input check.
    x = raw_table(200)
    norm = Standardize.fit(x).float()
    inner = METHODS["realnvp"].train(norm.inverse(x.float())[0], x.float(), Budget(steps=2), 0)

    def broken(n: int, gen: torch.Generator) -> torch.Tensor:
        z = inner.sample(n, gen)
        z[::3] = float("nan")
        return z

    raw = in_data_units(dataclasses.replace(inner, sample=broken), norm)
    with torch.no_grad():
        s = raw.sample(30, torch.Generator().manual_seed(0))
        finite = torch.isfinite(s).all(dim=1)
        assert int((~finite).sum()) == 10
        expected = norm.forward(broken(30, torch.Generator().manual_seed(0))[finite])[0]
    torch.testing.assert_close(s[finite], expected)


def test_compare_on_a_raw_file_and_its_log_det(tmp_path):
    path = tmp_path / "table.npy"
    np.save(path, raw_table(700).numpy())
    (rec,) = compare(str(path), "jko-spline", steps=8, num_samples=300, seed=1)
    assert rec["standardized"] and math.isfinite(rec["test_nll"])
    assert rec["details"]["standardize_log_det"] == pytest.approx(-math.log(2.3 * 0.6 * 1.4), abs=0.35)
