import math

import normflows as nf
import numpy as np
import pytest
import torch

from jko_plugin.compare import METHODS, compare
from jko_plugin.datasets.mixture import GaussianMixture
from jko_plugin.mixture import ClusterMixtureFlow, choose_clusters, cluster_labels, cluster_moments
from jko_plugin.steps.kinds import make_flow


def _base_only_flow(dim: int) -> nf.ConditionalNormalizingFlow:
    """q(z | k) = N(0, I) for every k: the mixture is then a Gaussian mixture, known exactly."""
    return nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), [])


def test_em_recovers_a_known_mixture_and_refuses_bad_input():
    truth = GaussianMixture.random(3, 4, seed=5)
    x, held_out = truth.sample(6000, seed=0), truth.sample(3000, seed=1)
    fitted = GaussianMixture.fit(x, 4, seed=0)
    # the fitted density scores held-out points as the true one does, to sampling error
    excess = float(truth.log_prob(held_out).mean() - fitted.log_prob(held_out).mean())
    assert 0 <= excess + 0.005 and excess < 0.02
    order = torch.cdist(truth.means, fitted.means).argmin(1)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(fitted.means[order], truth.means, atol=0.1)
    assert torch.allclose(fitted.weights[order], truth.weights, atol=0.02)
    again = GaussianMixture.fit(x, 4, seed=0)
    assert torch.equal(again.means, fitted.means)  # the seed fixes the k-means++ draws
    for bad, match in [
        (x[:3], "n >= 4 rows"),
        (torch.full((10, 3), float("nan")), "finite"),
        (x[:, 0], "shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            GaussianMixture.fit(bad, 4)


def test_component_log_prob_matches_torch_distributions():
    gmm = GaussianMixture.random(5, 3, seed=2)
    x = gmm.sample(50, seed=3).double()
    ref = torch.stack(
        [
            torch.distributions.MultivariateNormal(gmm.means[j], scale_tril=gmm.scale_trils[j]).log_prob(x)
            for j in range(3)
        ],
        dim=1,
    )
    assert torch.allclose(gmm.component_log_prob(x), ref, atol=1e-10)


def _separated(dim: int = 4) -> GaussianMixture:
    """Four Gaussians 10 apart with standard deviations 0.5 .. 1: no k-means run can miss them."""
    means = 10.0 * torch.eye(4, dim)
    trils = torch.stack([s * torch.eye(dim) for s in (0.5, 0.7, 0.8, 1.0)])
    return GaussianMixture(means, trils, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_choose_clusters_picks_the_true_count_on_held_out_rows():
    truth = _separated()
    x_sel = truth.sample(1000, seed=1)
    gmm, scores = choose_clusters(truth.sample(4000, seed=0), x_sel, (1, 2, 4, 8))
    assert gmm.num_components == min(scores, key=scores.get) == 4
    assert math.isclose(scores[4], float(-gmm.log_prob(x_sel).mean()), rel_tol=1e-6)
    assert abs(scores[4] - float(-truth.log_prob(x_sel).mean())) < 0.02
    # too few components cost nats; more than the truth's split a cluster and gain nothing
    assert scores[1] > scores[2] > scores[4] + 0.5 and scores[8] > scores[4]
    with pytest.raises(ValueError, match="need at least 400 rows"):
        choose_clusters(truth.sample(100, seed=0), truth.sample(10, seed=1), (8, 16))
    # one component needs no rows to spare: a small table still gets a (one-cluster) mixture
    gmm, scores = choose_clusters(truth.sample(60, seed=0), truth.sample(10, seed=1))
    assert gmm.num_components == 1 and sorted(scores) == [1]
    with pytest.raises(ValueError, match="cluster count"):
        choose_clusters(truth.sample(100, seed=0), truth.sample(10, seed=1), (0,))
    with pytest.raises(ValueError, match="at least one count"):
        choose_clusters(truth.sample(100, seed=0), truth.sample(10, seed=1), ())


def test_cluster_labels_drop_empty_components_and_moments_are_exact():
    near = torch.tensor([[0.0, 0.0], [5.0, 0.0], [500.0, 500.0]])
    gmm = GaussianMixture(near, torch.eye(2).expand(3, 2, 2), torch.ones(3))
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(100, 2, generator=gen) + torch.tensor([[0.0, 0.0]] * 40 + [[5.0, 0.0]] * 60)
    x_sel = torch.tensor([[499.0, 500.0], [0.1, 0.0]])  # the far point falls in a dropped component
    (labels, labels_sel), k = cluster_labels(gmm, x, x_sel)
    assert k == 2 and labels.tolist() == [0] * 40 + [1] * 60 and labels_sel[1] == 0
    assert int(labels_sel[0]) in (0, 1)
    loc, scale = cluster_moments(x, labels, k)
    for j in range(k):
        assert torch.allclose(loc[j], x[labels == j].mean(0), atol=1e-5)
        assert torch.allclose(scale[j], x[labels == j].std(0, unbiased=False), atol=1e-5)


def test_mixture_of_base_densities_is_the_gaussian_mixture_exactly():
    loc = torch.tensor([[-2.0, 1.0], [3.0, 0.5], [0.0, -4.0]])
    scale = torch.tensor([[0.5, 1.5], [1.0, 0.3], [2.0, 2.0]])
    labels = torch.tensor([0] * 2 + [1] * 3 + [2] * 5)
    model = ClusterMixtureFlow(_base_only_flow(2), labels, 3, loc, scale)
    ref = GaussianMixture(loc, torch.diag_embed(scale), torch.tensor([0.2, 0.3, 0.5]))
    x = torch.randn(200, 2) * 3
    assert torch.allclose(model.log_prob(x), ref.log_prob(x), atol=1e-5)
    samples, c = model.sample(20000, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(c, minlength=3).double() / 20000
    assert torch.allclose(share, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.015)
    for j in range(3):
        assert torch.allclose(samples[c == j].mean(0), loc[j], atol=0.1)
        assert torch.allclose(samples[c == j].std(0), scale[j], rtol=0.05)
    with pytest.raises(ValueError, match="fill every cluster"):
        ClusterMixtureFlow(_base_only_flow(2), torch.tensor([0, 0, 2]), 3)
    with pytest.raises(ValueError, match="scale positive"):
        ClusterMixtureFlow(_base_only_flow(2), labels, 3, loc, -scale)


def test_mixture_of_a_conditional_jko_flow_integrates_to_one():
    torch.manual_seed(0)
    flow = make_flow(1, 2, block="ode", num_classes=2, hidden=(16,), steps=2)
    with torch.no_grad():  # away from the identity the steps start at
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model = ClusterMixtureFlow(
        flow, torch.tensor([0, 1, 1]), 2, torch.tensor([[-3.0], [2.0]]), torch.tensor([[0.7], [1.3]])
    )
    grid = torch.linspace(-25, 25, 20001).unsqueeze(1)
    with torch.no_grad():
        density = model.log_prob(grid).exp()
    total = float(torch.trapezoid(density, grid.squeeze(1)))
    assert math.isclose(total, 1.0, abs_tol=2e-3)
    # and each cluster's part on its own carries its weight
    with torch.no_grad():
        parts = model.cluster_log_prob(grid).exp()
    shares = torch.trapezoid(parts.T, grid.squeeze(1))
    assert torch.allclose(shares, torch.tensor([1 / 3, 2 / 3]), atol=2e-3)


def test_jko_mixture_row_scores_and_samples_one_mixture():
    (rec,) = compare("gmm4", "jko-mixture", steps=6, num_train=1200, num_test=200, num_samples=300)
    d = rec["details"]
    assert np.isfinite(rec["test_nll"]) and rec["w2"] > 0 and rec["nonfinite_samples"] == 0
    assert d["clusters"] == min(
        map(int, d["cluster_selection_nll"]), key=lambda k: d["cluster_selection_nll"][str(k)]
    )
    assert math.isclose(sum(d["cluster_weights"]), 1.0, abs_tol=1e-5)
    assert set(d["cluster_selection_nll"]) <= {"1", "2", "4", "8", "16"}
    assert METHODS["jko-mixture"].config(4, 0).block == "ode"
    # it says which map its NLL and samples come from, as the jko row does
    assert d["density"] == "ODE divergence" and abs(d["solver_gap"]) < 0.5
    assert rec["nfe"] == d["kept_steps"] * 8 * 4
