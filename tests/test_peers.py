"""The real peers: torchcfm and Meta's flow_matching, run when installed (CI installs them)."""

import pytest
import torch
from jko_plugin.adapters.flow_matching import FlowMatchingModel

from jko_plugin.compare import compare

from .flowcheck import moons, perturb


def model64(seed=0):
    torch.manual_seed(seed)
    model = FlowMatchingModel(2, hidden=(16, 16)).double()
    perturb(model.net, 0.8)
    return model


def test_torchcfm_draws_our_linear_path_in_its_own_time():
    torchcfm = pytest.importorskip("torchcfm")
    model = model64()
    x1, x0 = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    _, xt, ut = torchcfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(x0, x1, t)
    # Our sigma = 1 - t runs from data to noise: same point, velocity of the opposite sign.
    xs, target = model.interpolate(x1, x0, 1 - t)
    torch.testing.assert_close(xt, xs)
    torch.testing.assert_close(ut, -target)


def test_flow_matching_solver_agrees_with_our_exact_ode_likelihood_and_sampler():
    pytest.importorskip("flow_matching")
    from jko_plugin.adapters.peers import flow_matching_log_prob, flow_matching_sample

    model = model64()
    x = torch.randn(7, 2, dtype=torch.float64)
    # Both are RK4 on 64 steps (torchdiffeq's 3/8 rule against the classical one): O(h^4) apart.
    ours = model.log_prob(x, steps=64)
    theirs = flow_matching_log_prob(model, x, steps=64)
    assert (ours - theirs).abs().max() < 1e-6, (ours, theirs)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = flow_matching_sample(model, 7, steps=64, generator=gen)
    torch.testing.assert_close(got, model.sample(7, steps=64, solver="rk4", latents=z), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["torchcfm", "torchcfm-ot", "flow_matching"])
def test_compare_runs_the_real_peer_within_the_budget(method):
    pytest.importorskip("flow_matching" if method == "flow_matching" else "torchcfm")
    (rec,) = compare("moons", [method], steps=60, num_train=600, num_test=300, w2_points=300, num_samples=300)
    assert rec["method"] == method and rec["train_steps"] == 60 and rec["errors"] == []
    assert rec["details"]["library"] == method.split("-")[0] and rec["nfe"] == 48
    # 60 Adam steps from a near-zero field: better than N(0, I) scored as a model of the data.
    x = moons(300, seed=1)
    gauss_nll = float(-torch.distributions.Normal(0, 1).log_prob(x).sum(-1).mean())
    assert rec["test_nll"] < gauss_nll, (rec["test_nll"], gauss_nll)
