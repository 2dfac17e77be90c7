"""GridRQSpline and the grid step kind: identity at init, exact inverse and log-det, saving."""

import normflows as nf
import numpy as np
import pytest
import torch
from normflows.utils import splines

from jko_plugin import JKOStep, JKOTrainer, make_flow
from jko_plugin.steps.grid import GridRQSpline, make_grid_step
from jko_plugin.steps.layers import build_layer, describe_layer

from .flowcheck import check_flow, jacobian_logdet, moons, perturb


@pytest.mark.parametrize("given", [0, 1])
def test_identity_at_initialisation(given):
    layer = GridRQSpline(given=given, num_bins=32, knots=16, tail_bound=3.0)
    x = torch.randn(200, 2) * 2  # some beyond the interval, where the tails are the identity
    for out, log_det in (layer.inverse(x), layer.forward(x)):
        torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
        torch.testing.assert_close(log_det, torch.zeros(200), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("given", "read_at", "marginal_bins"), [(0, "data", None), (1, "data", 13), (0, "latent", 3)]
)
def test_round_trip_and_log_det_against_the_jacobian(given, read_at, marginal_bins):
    torch.manual_seed(0)
    layer = GridRQSpline(
        given=given, num_bins=8, knots=5, tail_bound=2.0, read_at=read_at, marginal_bins=marginal_bins
    ).double()
    perturb(layer, scale=3.0)
    x = torch.randn(64, 2, dtype=torch.float64) * 1.5
    check_flow(layer, x, atol=1e-9)
    z, log_det = layer.inverse(x)
    assert (z - x).abs().max() > 0.1  # the perturbed map moves the points
    torch.testing.assert_close(
        log_det[:12], jacobian_logdet(lambda u: layer.inverse(u)[0], x[:12]), rtol=0, atol=1e-9
    )
    torch.testing.assert_close(
        layer.forward(z)[1][:12], jacobian_logdet(lambda u: layer.forward(u)[0], z[:12]), rtol=0, atol=1e-9
    )
    # the whole Jacobian, the table read's dependence on the given coordinate included
    for direction, points in ((layer.inverse, x[:6]), (layer.forward, z[:6])):
        assert torch.autograd.gradcheck(lambda u, f=direction: f(u)[0], (points.clone().requires_grad_(),))


def test_given_coordinate_goes_through_its_own_spline_and_the_other_reads_the_table():
    torch.manual_seed(1)
    layer = GridRQSpline(given=1, num_bins=6, knots=4, tail_bound=2.0, marginal_bins=10).double()
    perturb(layer, scale=2.0)
    x = torch.randn(10, 2, dtype=torch.float64)
    z, _ = layer.inverse(x)
    assert layer.marginal.shape == (3 * 10 - 1,) and layer.table.shape == (4, 3 * 6 - 1)
    m, j = layer.marginal.expand(10, -1), 10  # the given coordinate's spline has its own bins
    ref, _ = splines.unconstrained_rational_quadratic_spline(
        x[:, 1], m[:, :j], m[:, j : 2 * j], m[:, 2 * j :], tail_bound=2.0
    )
    torch.testing.assert_close(z[:, 1], ref)
    k = layer.num_bins
    # the other coordinate at a knot of the given one uses exactly that row of the table
    at_knot = torch.tensor([[0.3, -2.0], [0.3, 2.0 / 3]], dtype=torch.float64)  # knots at -2, -2/3, 2/3, 2
    rows = layer.table[[0, 2]]
    ref, _ = splines.unconstrained_rational_quadratic_spline(
        at_knot[:, 0], rows[:, :k], rows[:, k : 2 * k], rows[:, 2 * k :], tail_bound=2.0
    )
    torch.testing.assert_close(layer.inverse(at_knot)[0][:, 0], ref)


def test_a_grid_step_saves_and_reloads_as_the_same_map():
    torch.manual_seed(2)
    step = make_grid_step(2, layers=2, given=1, bins=8, knots=6, tail_bound=3.0)
    perturb(step, scale=2.0)
    rebuilt = JKOStep.from_config(step.config())
    rebuilt.load_state_dict(step.state_dict())
    x = moons(50)
    torch.testing.assert_close(rebuilt.inverse(x)[0], step.inverse(x)[0])
    assert [describe_layer(f)["kwargs"]["given"] for f in step.flows] == [1, 0]
    layer = GridRQSpline(given=1, num_bins=4, knots=3, tail_bound=2.5)  # described from its attributes
    assert describe_layer(layer) == {
        "class": "GridRQSpline",
        "kwargs": {
            "given": 1,
            "num_bins": 4,
            "knots": 3,
            "tail_bound": 2.5,
            "read_at": "data",
            "smoothness": 0.0,
            "marginal_bins": 4,
            "smoothness_norm": "l2",
        },
    }
    assert isinstance(build_layer(describe_layer(layer)), GridRQSpline)
    # a layer saved before marginal_bins and smoothness_norm existed rebuilds as it was
    new = ("marginal_bins", "smoothness_norm")
    old = {k: v for k, v in describe_layer(layer)["kwargs"].items() if k not in new}
    rebuilt = build_layer({"class": "GridRQSpline", "kwargs": old})
    assert (rebuilt.marginal_bins, rebuilt.smoothness_norm) == (4, "l2")


def test_the_smoothness_prior_is_the_sum_of_row_differences_and_training_adds_it():
    torch.manual_seed(4)
    step = make_grid_step(2, layers=2, bins=4, knots=6, smoothness=0.5, smoothness_norm="l2")
    perturb(step, scale=2.0)
    tables = [layer.table for layer in step.flows]
    expected = sum(0.5 * (t[1:] - t[:-1]).square().sum() for t in tables)
    torch.testing.assert_close(step.penalty(), expected)
    # "l1": the tables' total variation, saved with the step
    tv = make_grid_step(2, layers=2, bins=4, knots=6, smoothness=0.5, smoothness_norm="l1")
    tv.load_state_dict(step.state_dict())
    torch.testing.assert_close(tv.penalty(), sum(0.5 * (t[1:] - t[:-1]).abs().sum() for t in tables))
    assert JKOStep.from_config(tv.config()).flows[1].smoothness_norm == "l1"
    # The layer has no prior by default (its loss is the proximal one); the step recipe has a light one.
    assert GridRQSpline().penalty() is None and make_grid_step(2, smoothness=0.0).penalty() is None
    default = make_grid_step(2).flows[0]
    assert (default.knots, default.smoothness, default.smoothness_norm) == (512, 5e-6, "l1")
    assert (default.num_bins, default.marginal_bins, GridRQSpline().smoothness_norm) == (64, 256, "l2")
    # Training with a strong prior smooths a rough table; without it the rows stay apart.
    rough = []
    for smoothness, norm in ((0.0, "l2"), (10.0, "l2"), (10.0, "l1")):
        flow = make_flow(2, 1, block="grid", bins=4, knots=16, smoothness=smoothness, smoothness_norm=norm)
        torch.manual_seed(5)
        perturb(flow, scale=2.0)
        JKOTrainer(flow, [0.5], iterations=60, batch_size=128, lr=0.1, progress=False).fit(moons(512))
        table = flow.flows[0].flows[0].table.detach()
        rough.append(float((table[1:] - table[:-1]).square().sum()))
    assert max(rough[1:]) < 0.01 * rough[0]


def test_a_grid_flow_trains_and_samples_in_two_dimensions():
    flow = make_flow(2, 2, block="grid", bins=8, knots=8)
    assert all(f.kind == "grid" for f in flow.flows)
    x = moons(256)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(-flow.log_prob(x).mean())
    for _ in range(60):
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(-flow.log_prob(x).mean()) < before - 0.3
    samples, log_q = flow.sample(100)
    torch.testing.assert_close(log_q, flow.log_prob(samples), atol=1e-4, rtol=0)
    assert isinstance(flow, nf.NormalizingFlow)


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="grid steps are for 2-D data .* got dim=3"):
        make_grid_step(3)
    with pytest.raises(ValueError, match="grid steps take no context"):
        make_grid_step(2, num_classes=3)
    with pytest.raises(ValueError, match=r"given must be one of \[0, 1\], got 2"):
        GridRQSpline(given=2)
    with pytest.raises(ValueError, match="knots must be an integer >= 2, got 1"):
        GridRQSpline(knots=1)
    with pytest.raises(ValueError, match="read_at must be one of \\['data', 'latent'\\], got 'x'"):
        GridRQSpline(read_at="x")
    with pytest.raises(ValueError, match="smoothness must be >= 0, got -1.0"):
        GridRQSpline(smoothness=-1.0)
    with pytest.raises(ValueError, match="smoothness_norm must be one of"):
        GridRQSpline(smoothness_norm="tv")
    with pytest.raises(ValueError, match="marginal_bins must be a positive integer, got 0"):
        GridRQSpline(marginal_bins=0)
    with pytest.raises(ValueError, match="marginal_bins must be at most 999"):
        GridRQSpline(marginal_bins=1024)
    with pytest.raises(ValueError, match=r"given must be one of \[0, 1\], got -1"):
        make_grid_step(2, given=-1)


def test_train_and_sample_a_grid_flow_from_the_command_line(tmp_path, capsys):
    from jko_plugin.cli import main

    np.save(tmp_path / "pts.npy", moons(600).numpy())
    run = tmp_path / "run"
    args = ["--block", "grid", "--blocks", "2", "--iterations", "20", "--spline-bins", "8", "--quiet"]
    assert main(["train", "--data", str(tmp_path / "pts.npy"), "--out", str(run), *args]) == 0
    assert main(["sample", "--model", str(run / "model"), "-n", "40", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (40, 2) and np.isfinite(samples).all()
    np.save(tmp_path / "pts3.npy", np.random.default_rng(0).normal(size=(300, 3)))
    assert main(["train", "--data", str(tmp_path / "pts3.npy"), "--out", str(tmp_path / "r3"), *args]) == 2
    assert "grid steps are for 2-D data" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "model").exists()


def test_compare_refuses_the_grid_method_off_two_dimensions():
    from jko_plugin.compare import compare

    with pytest.raises(
        ValueError, match="compare method 'jko-grid' models data of dimension \\(2,\\), got d = 3"
    ):
        compare("gmm3", "jko-grid", steps=4, num_train=200, num_test=50)
