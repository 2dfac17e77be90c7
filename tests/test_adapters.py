import math
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from jko_plugin.adapters.external import ExternalVelocity
from jko_plugin.adapters.flow_matching import (
    FlowMatchingModel,
    TrainingBudget,
    fit_flow_matching,
    ot_pairing,
    sample_with_scheduler,
)
from jko_plugin.adapters.normflows_baselines import (
    fit_maximum_likelihood,
    make_baseline,
    make_nsf,
    make_realnvp,
    sample_flow,
)

from jko_plugin._ops import solver_nfe as nfe
from jko_plugin.datasets import two_moons
from jko_plugin.sampling.ode import exact_divergence, ode_log_prob, sample_ode

M, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


def gaussian_path_velocity(x, t):
    """Marginal velocity of the linear path from N(0, I) (t = 0) to N(M, S^2 I) (t = 1), torchcfm's
    convention: x_t = t x1 + (1 - t) x0, v = dx/dt. Its flow maps z to M + S z."""
    t = t.reshape(-1, 1).to(x.dtype)
    var = t * t * S * S + (1 - t) ** 2
    return M + (t * S * S - (1 - t)) / var * (x - t * M)


def gaussian_log_prob(x):
    return (-0.5 * ((x - M) / S).square().sum(-1) - 2 * math.log(S) - math.log(2 * math.pi)).to(x.dtype)


# -- external models: closed form --------------------------------------------------------------
def test_external_nll_and_samples_match_the_gaussian_closed_form():
    ext = ExternalVelocity(gaussian_path_velocity, dim=2, time_convention="noise_to_data")
    x = torch.randn(64, 2, dtype=torch.float64) * 1.3 + M
    for steps, tol in ((16, 1e-3), (64, 1e-5)):
        assert (ext.log_prob(x, steps=steps) - gaussian_log_prob(x)).abs().max() < tol
    z = torch.randn(64, 2, dtype=torch.float64)
    torch.testing.assert_close(
        ext.sample(64, latents=z, steps=64, solver="rk4"), M + S * z, atol=1e-7, rtol=0
    )
    # the per-dimension loop and Hutchinson (many probes) agree with the batched exact trace
    torch.testing.assert_close(ext.log_prob(x[:8], trace="exact-loop"), ext.log_prob(x[:8]))
    gen = torch.Generator().manual_seed(0)
    hutch = ext.log_prob(x[:8], trace="hutchinson", num_probes=256, generator=gen)
    assert (hutch - ext.log_prob(x[:8])).abs().max() < 0.05


def test_external_time_conventions_agree():
    """The same field given in diffusers' convention (t = sigma, timestep = 1000 sigma) is the same flow."""

    def diffusers_style(x, timestep):
        return -gaussian_path_velocity(x, 1.0 - timestep / 1000.0)

    a = ExternalVelocity(gaussian_path_velocity, dim=2)
    b = ExternalVelocity(diffusers_style, dim=2, time_convention="data_to_noise", t_scale=1000.0)
    x = torch.randn(16, 2, dtype=torch.float64) + M
    torch.testing.assert_close(a.log_prob(x, steps=8), b.log_prob(x, steps=8), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="time_convention must be one of"):
        ExternalVelocity(gaussian_path_velocity, dim=2, time_convention="forward")
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(3, 2\)"):
        ExternalVelocity(lambda x, t: x[:, :1], dim=2).sample(3)
    with pytest.raises(ValueError, match="trace must be one of"):
        a.log_prob(x, trace="approx")


def test_nfe():
    assert nfe(8, "euler") == 8 and nfe(8, "heun") == 16 and nfe(8, "rk4") == 32
    with pytest.raises(ValueError, match="solver must be one of"):
        nfe(8, "rk45")


# -- our flow-matching models ------------------------------------------------------------------
@pytest.mark.parametrize("path", ["linear", "trig"])
def test_interpolant_target_is_the_path_derivative(path):
    model = FlowMatchingModel(3, hidden=(8,), path=path).double()
    x, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    s = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    xs, target = model.interpolate(x, z, s)
    h = 1e-6
    fd = (model.interpolate(x, z, s + h)[0] - model.interpolate(x, z, s - h)[0]) / (2 * h)
    torch.testing.assert_close(target, fd, atol=1e-8, rtol=0)
    # endpoints: data at sigma = 0, noise at sigma = 1
    torch.testing.assert_close(model.interpolate(x, z, torch.zeros(5, dtype=torch.float64))[0], x)
    torch.testing.assert_close(model.interpolate(x, z, torch.ones(5, dtype=torch.float64))[0], z)


def test_flow_matching_log_prob_equals_the_log_det_of_the_flow_map():
    """Forward-mode trace NLL against an independent reference: log N(T(x)) + log|det dT/dx| of the
    RK4 map by autograd, which agrees with the integrated divergence to the solver's accuracy."""
    torch.manual_seed(1)
    model = FlowMatchingModel(2, hidden=(16, 16), activation="tanh").double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(6, 2, dtype=torch.float64)

    def flow_map(u):
        from jko_plugin._ops import SOLVERS, integrate

        return integrate(lambda y, s: (model.velocity(y, s), ()), u, 0.0, 1.0, 64, SOLVERS["rk4"], 0)[0]

    ref = []
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda u: flow_map(u[None])[0], row)
        z = flow_map(row[None])[0]
        ref.append(-0.5 * z.square().sum() - math.log(2 * math.pi) + torch.linalg.slogdet(jac)[1])
    got = model.log_prob(x, steps=64)
    assert (got - torch.stack(ref)).abs().max() < 1e-6
    # the same through the external adapter's autograd trace
    ext = ExternalVelocity(model.velocity, dim=2, time_convention="data_to_noise")
    torch.testing.assert_close(ext.log_prob(x, steps=64), got, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "path,coupling", [("linear", "independent"), ("linear", "ot"), ("trig", "independent")]
)
def test_flow_matching_trains_and_evaluates(path, coupling):
    if coupling == "ot":
        pytest.importorskip("ot")
    x = two_moons(512, seed=0, noise=0.05, standardize=True)
    torch.manual_seed(0)
    model = FlowMatchingModel(2, hidden=(32, 32), path=path)
    history = fit_flow_matching(model, x, coupling=coupling, steps=40, batch_size=128, lr=3e-3, log_every=10)
    assert history.steps == 40 and history.seconds > 0
    losses = [loss for _, loss in history.losses]
    assert np.mean(losses[-2:]) < losses[0]
    samples = model.sample(200, steps=8, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()
    nll = model.log_prob(x[:100], steps=8)
    assert nll.shape == (100,) and torch.isfinite(nll).all()
    # same seed and initial weights -> the same model
    torch.manual_seed(0)
    again = FlowMatchingModel(2, hidden=(32, 32), path=path)
    fit_flow_matching(again, x, coupling=coupling, steps=40, batch_size=128, lr=3e-3)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_ot_pairing_is_optimal():
    pytest.importorskip("ot")
    optimize = pytest.importorskip("scipy.optimize")
    x, z = torch.randn(40, 3), torch.randn(40, 3)
    perm = ot_pairing(x, z)
    cost = torch.cdist(x.double(), z.double()).square()
    rows, cols = optimize.linear_sum_assignment(cost.numpy())
    assert sorted(perm.tolist()) == list(range(40))
    assert abs(float(cost[torch.arange(40), perm].sum()) - float(cost.numpy()[rows, cols].sum())) < 1e-9


def test_ot_coupling_without_pot_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ImportError, match="coupling='ot' needs POT"):
        fit_flow_matching(FlowMatchingModel(2), torch.randn(64, 2), coupling="ot", steps=1)


def test_flow_matching_bad_options():
    with pytest.raises(ValueError, match="path must be one of"):
        FlowMatchingModel(2, path="vp-sde")
    with pytest.raises(ValueError, match="coupling must be one of"):
        fit_flow_matching(FlowMatchingModel(2), torch.randn(8, 2), coupling="sinkhorn", steps=1)
    with pytest.raises(ValueError, match="give a training budget"):
        fit_flow_matching(FlowMatchingModel(2), torch.randn(8, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        fit_flow_matching(FlowMatchingModel(2), torch.randn(8, 3), steps=1)


def test_training_budget():
    b = TrainingBudget(steps=10, seconds=100.0)
    assert b.progress(5, 10.0) == 0.5 and b.progress(1, 80.0) == 0.8 and b.done(10, 0.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TrainingBudget(steps=0)


def test_budget_in_seconds_stops_on_time():
    model = FlowMatchingModel(2, hidden=(16,))
    history = fit_flow_matching(model, torch.randn(256, 2), budget_seconds=0.3, batch_size=32)
    assert 0.3 <= history.seconds < 1.5 and history.steps > 1


def test_sampling_through_diffusers_scheduler_and_pipeline(tmp_path):
    from jko_plugin.sampling.pipeline import JKOFlowPipeline

    torch.manual_seed(0)
    model = FlowMatchingModel(2, hidden=(16, 16)).double()
    with torch.no_grad():
        model.net.layers[-1].weight.normal_()
    z = torch.randn(7, 2, dtype=torch.float64)
    scheduler = FlowMatchEulerDiscreteScheduler()
    got = sample_with_scheduler(model, scheduler, z, num_inference_steps=12)
    # the scheduler's Euler steps on its sigma grid, by hand
    x = z
    sigmas = scheduler.sigmas.tolist()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * model.velocity(x, s)
    torch.testing.assert_close(got, x, atol=1e-6, rtol=0)
    pipe = JKOFlowPipeline(model=model, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(pipe(latents=z, num_inference_steps=12).samples, got, atol=1e-12, rtol=0)
    # save and load as a diffusers model
    model.save_pretrained(tmp_path)
    loaded = FlowMatchingModel.from_pretrained(tmp_path, low_cpu_mem_usage=False).double()
    assert loaded.config.path == "linear" and list(loaded.config.hidden) == [16, 16]
    torch.testing.assert_close(loaded.sample(7, latents=z), model.sample(7, latents=z))


# -- normflows baselines -----------------------------------------------------------------------
@pytest.mark.parametrize("name,dim", [("realnvp", 2), ("realnvp", 3), ("nsf", 2), ("nsf", 3)])
def test_baselines_train_and_evaluate(name, dim):
    x = torch.randn(512, dim) * torch.linspace(0.5, 1.5, dim) + 0.3
    torch.manual_seed(0)
    flow = make_baseline(name, dim, num_layers=2, hidden=16)
    with torch.no_grad():
        before = -flow.log_prob(x).mean()
    history = fit_maximum_likelihood(flow, x, steps=30, batch_size=128, lr=5e-3)
    assert history.steps == 30
    with torch.no_grad():
        nll = -flow.log_prob(x)
    assert torch.isfinite(nll).all() and nll.mean() < before
    gen = torch.Generator().manual_seed(0)
    s = sample_flow(flow, 100, generator=gen)
    assert s.shape == (100, dim) and torch.isfinite(s).all()
    assert torch.equal(s, sample_flow(flow, 100, generator=torch.Generator().manual_seed(0)))


def test_baseline_log_prob_integrates_to_one():
    torch.manual_seed(0)
    flow = make_nsf(2, num_layers=2, hidden=16)
    fit_maximum_likelihood(flow, two_moons(512, seed=0, noise=0.1, standardize=True), steps=30, lr=5e-3)
    g = torch.linspace(-6, 6, 241)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = float(flow.log_prob(pts).exp().sum()) * float(g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 0.02


def test_baseline_bad_options():
    with pytest.raises(ValueError, match=r"name must be one of \['nsf', 'realnvp'\]"):
        make_baseline("glow", 2)
    with pytest.raises(ValueError, match="dim must be an integer >= 2"):
        make_realnvp(1)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        make_nsf(2, num_layers=0)


# -- optional external libraries (skipped when absent; never installed by default) ---------------
def test_torchcfm_model_through_the_adapter():
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    matcher = cfm.ConditionalFlowMatcher(sigma=0.0)
    data = two_moons(512, seed=0, noise=0.05, standardize=True)
    for _ in range(20):
        t, xt, ut = matcher.sample_location_and_conditional_flow(torch.randn_like(data), data)
        loss = (net(torch.cat([xt, t[:, None]], -1)) - ut).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ext = ExternalVelocity(lambda x, t: net(torch.cat([x, t[:, None]], -1)), dim=2)
    assert torch.isfinite(ext.log_prob(data[:50], steps=8)).all()
    assert ext.sample(10, steps=4).shape == (10, 2)


def test_meta_flow_matching_model_through_the_adapter():
    path_mod = pytest.importorskip("flow_matching.path")
    sched = pytest.importorskip("flow_matching.path.scheduler")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    path = path_mod.AffineProbPath(scheduler=sched.CondOTScheduler())
    data = two_moons(512, seed=0, noise=0.05, standardize=True)
    for _ in range(20):
        t = torch.rand(data.shape[0])
        ps = path.sample(t=t, x_0=torch.randn_like(data), x_1=data)
        loss = (net(torch.cat([ps.x_t, t[:, None]], -1)) - ps.dx_t).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ext = ExternalVelocity(lambda x, t: net(torch.cat([x, t[:, None]], -1)), dim=2)
    assert torch.isfinite(ext.log_prob(data[:50], steps=8)).all()


def test_sample_ode_and_exact_divergence_directly():
    v = lambda x, s: -2.0 * x  # noqa: E731  div = -2 d
    x = torch.randn(4, 3, dtype=torch.float64)
    _, div = exact_divergence(v, x, 0.3)
    torch.testing.assert_close(div, torch.full((4,), -6.0, dtype=torch.float64))
    # dx/dsigma = -2x from sigma = 1 to 0 multiplies by e^2
    torch.testing.assert_close(sample_ode(v, x, steps=200, solver="rk4"), x * math.exp(2.0))
    # log p(x) = log N(x e^-2) - 6 (div integrated over [0, 1])
    lp = ode_log_prob(lambda y, s: (v(y, s), torch.full((y.shape[0],), -6.0, dtype=y.dtype)), x, steps=50)
    ref = -0.5 * (x * math.exp(-2.0)).square().sum(-1) - 1.5 * math.log(2 * math.pi) - 6.0
    torch.testing.assert_close(lp, ref)
