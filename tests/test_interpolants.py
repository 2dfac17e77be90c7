"""Gaussian interpolants: boundary values, derivatives against autograd, closed-form Gaussian flows,
and the flow-matching trainer on each of them."""

import json
import math

import pytest
import torch
from jko_plugin.adapters.external import ExternalVelocity
from jko_plugin.adapters.flow_matching import FlowMatchingModel, fit_flow_matching

from jko_plugin._ops import SOLVERS, integrate
from jko_plugin.compare import METHODS
from jko_plugin.interpolants import INTERPOLANTS, GaussianInterpolant, get_interpolant

NAMES = sorted(INTERPOLANTS)
M, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


def test_the_family_is_registered_and_each_is_a_compare_method():
    assert NAMES == ["linear", "trig", "vp", "vp-linear"]
    assert {m.path for m in METHODS.values() if hasattr(m, "path") and m.coupling == "independent"} == set(
        NAMES
    )
    assert METHODS["cfm"].path == "linear" and METHODS["vp"].path == "vp"


@pytest.mark.parametrize("name", NAMES)
def test_boundary_values(name):
    path = INTERPOLANTS[name]
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    a, b, _, _ = path.coefficients(ends)
    torch.testing.assert_close(a, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(b, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-15, rtol=0)
    x1, z = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(
        path.interpolate(x1, z, torch.zeros(4, dtype=torch.float64)), z, atol=1e-15, rtol=0
    )
    torch.testing.assert_close(
        path.interpolate(x1, z, torch.ones(4, dtype=torch.float64)), x1, atol=1e-15, rtol=0
    )
    # sigma = 1 - t: data at sigma 0, noise at sigma 1 (the samplers' convention)
    xs, _ = path.at_sigma(x1, z, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(xs, x1, atol=1e-15, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_velocity_is_the_time_derivative_by_autograd(name):
    path = INTERPOLANTS[name]
    x1, z = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.98 + 0.01
    (d_dt,) = torch.autograd.functional.jvp(lambda t: path.interpolate(x1, z, t), t, torch.ones_like(t))[1:]
    torch.testing.assert_close(path.velocity(x1, z, t), d_dt, atol=1e-12, rtol=1e-12)
    xs, dsigma = path.at_sigma(x1, z, 1.0 - t)
    torch.testing.assert_close(dsigma, -d_dt, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_conditional_velocity_averages_to_the_gaussian_flow_in_closed_form(name):
    """For Gaussian data N(M, S^2 I), E[x1' | x_t] is linear in x_t: regress the conditional velocity
    on x_t (Monte Carlo) and compare with the closed form; then integrate the closed form from noise
    to data: it must map z to M + S z (the affine Gaussian-to-Gaussian flow)."""
    path = INTERPOLANTS[name]
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x1 = M + S * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    for t0 in (0.2, 0.5, 0.8):
        t = torch.full((n,), t0, dtype=torch.float64)
        xt, target = path.interpolate(x1, z, t), path.velocity(x1, z, t)
        design = torch.cat([xt, torch.ones(n, 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(design, target).solution  # (3, 2): slope rows, intercept
        probe = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=torch.float64)
        fitted = torch.cat([probe, torch.ones(2, 1, dtype=torch.float64)], 1) @ coef
        exact = path.gaussian_velocity(probe, torch.full((2,), t0, dtype=torch.float64), M, S)
        torch.testing.assert_close(fitted, exact, atol=0.02, rtol=0)
    zz = torch.randn(64, 2, dtype=torch.float64)
    flow = integrate(
        lambda x, t: (path.gaussian_velocity(x, torch.full((x.shape[0],), t, dtype=x.dtype), M, S), ()),
        zz,
        0.0,
        1.0,
        400,
        SOLVERS["rk4"],
        0,
    )[0]
    torch.testing.assert_close(flow, M + S * zz, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_exact_nll_of_the_closed_form_flow_is_the_gaussian_density(name):
    """The exact-divergence likelihood (as flow matching is scored) of each path's closed-form field."""
    path = INTERPOLANTS[name]
    ext = ExternalVelocity(
        lambda x, t: path.gaussian_velocity(x, t, M, S), dim=2, time_convention="noise_to_data"
    )
    x = M + S * torch.randn(32, 2, dtype=torch.float64)
    truth = -0.5 * ((x - M) / S).square().sum(-1) - 2 * math.log(S) - math.log(2 * math.pi)
    assert (ext.log_prob(x, steps=128) - truth).abs().max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_flow_matching_trains_on_every_path_and_saves_its_name(name, tmp_path):
    x = M + S * torch.randn(512, 2, dtype=torch.float64)
    torch.manual_seed(0)
    model = FlowMatchingModel(2, hidden=(16, 16), path=name).double()
    history = fit_flow_matching(model, x, steps=30, batch_size=64, lr=3e-3, log_every=5)
    assert history.steps == 30 and all(math.isfinite(loss) for _, loss in history.losses)
    assert torch.isfinite(model.log_prob(x[:8], steps=8)).all()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["path"] == name
    loaded = FlowMatchingModel.from_pretrained(tmp_path, low_cpu_mem_usage=False).double()
    assert loaded.interpolant is INTERPOLANTS[name]
    z = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded.sample(5, latents=z), model.sample(5, latents=z))


def test_vp_paths_train_away_from_their_singular_data_end():
    for name in ("vp", "vp-linear"):
        path = INTERPOLANTS[name]
        _, _, _, db = path.coefficients(torch.tensor([1.0], dtype=torch.float64))
        assert not torch.isfinite(db).all()  # b ~ sqrt(1 - t): infinite slope at the data end
        sigma = path.sample_sigma(10_000, generator=torch.Generator().manual_seed(0), like=torch.zeros(1))
        assert float(sigma.min()) >= 1.0 - path.t_max and float(sigma.max()) <= 1.0
    sigma = INTERPOLANTS["linear"].sample_sigma(
        4, generator=torch.Generator().manual_seed(0), like=torch.zeros(1)
    )
    torch.testing.assert_close(sigma, torch.rand(4, generator=torch.Generator().manual_seed(0)))


def test_a_custom_interpolant_object():
    # a(t) = t^2 is a valid schedule; derivatives come from autograd when not given
    path = GaussianInterpolant(lambda t: t * t, lambda t: 1 - t, name="quadratic")
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    _, _, da, db = path.coefficients(t)
    torch.testing.assert_close(da, 2 * t) and torch.testing.assert_close(db, -torch.ones_like(t))
    model = FlowMatchingModel(2, hidden=(8,), path=path)
    assert model.interpolant is path and model.config.path == "quadratic"
    fit_flow_matching(model, torch.randn(64, 2), steps=2, batch_size=16)
    assert get_interpolant("trig") is INTERPOLANTS["trig"]


def test_bad_interpolants():
    with pytest.raises(ValueError, match=r"a\(0\)=0, a\(1\)=1, b\(0\)=1, b\(1\)=0, got \{'a\(0\)': 1.0"):
        GaussianInterpolant(lambda t: torch.ones_like(t), lambda t: 1 - t)
    with pytest.raises(ValueError, match="t_max must lie in"):
        GaussianInterpolant(lambda t: t, lambda t: 1 - t, t_max=1.5)
    with pytest.raises(ValueError, match="a must be callable"):
        GaussianInterpolant(0.5, lambda t: 1 - t)
    with pytest.raises(ValueError, match=r"path must be one of \['linear', 'trig', 'vp', 'vp-linear'\]"):
        FlowMatchingModel(2, path="cosine")
