import math

import normflows as nf
import numpy as np
import pytest
import torch

from jko_plugin.metrics import (
    BACKENDS,
    bits_per_dim,
    inversion_error,
    mmd,
    nll,
    sinkhorn,
    sinkhorn_divergence,
    w2_floor,
    wasserstein2,
)
from jko_plugin.steps.block import JKOBlock
from tests.flowcheck import perturb

ot = pytest.importorskip("ot")


def moons(n: int, seed: int, noise: float = 0.05) -> np.ndarray:
    """Standardised two moons (the design's reference data)."""
    r = np.random.default_rng(seed)
    t = np.pi * r.random(n)
    upper = r.random(n) < 0.5
    x = np.where(
        upper[:, None], np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)
    )
    x = x + noise * r.standard_normal((n, 2))
    return (x - [0.5, 0.25]) / [0.87, 0.5]


def gauss(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)) * scale + shift


def exact_w2(x: np.ndarray, y: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> float:
    a = np.full(len(x), 1.0 / len(x)) if a is None else a / a.sum()
    b = np.full(len(y), 1.0 / len(y)) if b is None else b / b.sum()
    return math.sqrt(ot.emd2(a, b, ot.dist(x, y), numItermax=10**7))


# Pairs of samples, exact W2 from POT's network simplex. The issue asks for 3%; we check 1%.
CASES = {
    "2d_moons_vs_gauss": lambda: (moons(700, 1), gauss(600, 2, 2)),  # a model far from the data
    "2d_moons_vs_moons": lambda: (moons(800, 1), moons(800, 3)),  # two samples of one law (the floor)
    "2d_shifted": lambda: (moons(600, 1), moons(600, 3) + [0.3, -0.2]),
    "16d_scaled": lambda: (gauss(600, 16, 1), gauss(500, 16, 2, scale=1.3)),
    "16d_same_law": lambda: (gauss(600, 16, 1), gauss(600, 16, 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_w2_matches_exact_ot(case):
    x, y = CASES[case]()
    exact = exact_w2(x, y)
    res = sinkhorn(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert res.backend == ("sparse" if x.shape[1] == 2 else "tensorized")
    assert abs(res.w2 - exact) / exact <= 0.01, (res, exact)  # measured: <= 0.3%
    assert res.marginal_error <= (0.01 if x.shape[1] == 2 else 0.1)


@pytest.mark.parametrize("backend", ["tensorized", "sparse"])
def test_backends_agree_with_exact_ot_in_2d(backend):
    x, y = moons(1500, 5), moons(1200, 6) @ np.array([[0.9, 0.2], [-0.1, 1.1]])
    exact = exact_w2(x, y)
    value = wasserstein2(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), backend=backend
    )
    assert abs(value - exact) / exact <= 0.02


def test_weighted_inputs_match_weighted_exact_ot():
    rng = np.random.default_rng(0)
    x, y = moons(500, 1), gauss(400, 2, 2, scale=0.8)
    a, b = rng.random(500) ** 2, rng.random(400)
    a[:50] = 0.0  # zero weights are allowed (those points are ignored)
    exact = exact_w2(x, y, a, b)
    for backend in ("tensorized", "sparse"):
        value = wasserstein2(x, y, weights=(a, b), backend=backend)
        assert abs(value - exact) / exact <= 0.03, backend
    # Scaling the weights changes nothing: they are normalised.
    assert wasserstein2(x, y, weights=(3 * a, b)) == pytest.approx(
        wasserstein2(x, y, weights=(a, b)), rel=1e-6
    )


def test_numpy_float64_and_float32_inputs_agree():
    x, y = moons(400, 1), moons(400, 2) + [0.5, 0.0]
    from_numpy = wasserstein2(x, y)  # float64 numpy arrays
    from_torch64 = wasserstein2(torch.from_numpy(x), torch.from_numpy(y))
    from_torch32 = wasserstein2(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert from_numpy == from_torch64
    assert from_torch32 == pytest.approx(from_torch64, rel=2e-3)
    assert abs(from_torch64 - exact_w2(x, y)) / exact_w2(x, y) <= 0.03


def test_translation_gives_the_shift_and_identical_sets_give_zero():
    x = torch.randn(500, 3, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    assert wasserstein2(x, x + shift) == pytest.approx(float(shift.norm()), rel=1e-3)
    assert sinkhorn_divergence(x, x) == 0.0
    assert sinkhorn_divergence(x, x.clone()) == 0.0


def test_w2_of_two_single_points_is_their_distance():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert wasserstein2(x, y) == pytest.approx(5.0, rel=1e-4)


def test_our_tensorized_solver_computes_geomloss_divergence():
    # Same quantity as GeomLoss's SamplesLoss; GeomLoss's solver converges with scaling close to 1.
    x, y = torch.tensor(moons(300, 1)), torch.tensor(gauss(250, 2, 2, scale=0.7))
    ours = sinkhorn_divergence(x, y, blur=0.1, backend="tensorized", tol=1e-4)
    theirs = sinkhorn_divergence(x, y, blur=0.1, backend="geomloss", scaling=0.995)
    assert ours == pytest.approx(theirs, rel=2e-3)


def test_geomloss_backend_restores_autograd_mode():
    x, y = torch.randn(100, 2), torch.randn(100, 2)
    with torch.no_grad():
        sinkhorn(x, y, backend="geomloss")
        assert not torch.is_grad_enabled()
    sinkhorn(x, y, backend="geomloss")
    assert torch.is_grad_enabled()


def test_auto_never_picks_keops_without_it_past_geomloss_threshold():
    # GeomLoss's own "auto" switches to KeOps past 5000 x 5000 pairs and crashes without pykeops.
    x, y = (
        torch.tensor(moons(5100, 1), dtype=torch.float32),
        torch.tensor(moons(5100, 2), dtype=torch.float32),
    )
    res = sinkhorn(x, y)
    assert res.backend == "sparse" and 0.03 < res.w2 < 0.2


def test_keops_backends_raise_import_error_without_pykeops():
    try:
        import pykeops.torch  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("pykeops is installed")
    for backend in ("online", "multiscale"):
        with pytest.raises(ImportError, match="pykeops"):
            wasserstein2(torch.randn(10, 2), torch.randn(10, 2), backend=backend)


def test_w2_floor_is_w2_between_two_disjoint_halves():
    x = torch.tensor(moons(1200, 1), dtype=torch.float32)
    floor = w2_floor(x, 500, seed=3)
    perm = torch.randperm(1200, generator=torch.Generator().manual_seed(3))
    assert floor == wasserstein2(x[perm[:500]], x[perm[500:1000]])
    assert exact_w2(x[perm[:500]].double().numpy(), x[perm[500:1000]].double().numpy()) == pytest.approx(
        floor, rel=0.03
    )
    assert w2_floor(x, repeats=2) > 0
    with pytest.raises(ValueError, match="n must be"):
        w2_floor(x, 601)
    with pytest.raises(ValueError, match="repeats"):
        w2_floor(x, repeats=0)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = torch.randn(400, 2, dtype=torch.float64)
    y = torch.randn(400, 2, dtype=torch.float64)
    assert mmd(x, x) == 0.0
    values = [mmd(x, y + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert values[0] < 0.01
    assert all(u < v for u, v in zip(values, values[1:]))
    # One bandwidth, by hand.
    d2 = lambda p, q: torch.cdist(p, q).square()  # noqa: E731
    k = lambda p, q: torch.exp(-d2(p, q) / 2).mean()  # noqa: E731
    assert mmd(x, y + 1, bandwidths=1.0) == pytest.approx(
        float(k(x, x) + k(y, y) - 2 * k(x, y + 1)), rel=1e-9
    )
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=(1.0, -1.0))


@pytest.fixture
def flow(dtype, device):
    torch.manual_seed(0)
    blocks = [
        JKOBlock(2, hidden=(16, 16), interval=(0.0, 0.5)),
        JKOBlock(2, hidden=(16, 16), interval=(0.5, 1.2)),
    ]
    for block in blocks:
        perturb(block)
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2), blocks).to(device=device, dtype=dtype)


def test_nll_and_bits_per_dim_match_log_prob(flow, dtype, device):
    x = torch.randn(300, 2, dtype=dtype, device=device)
    with torch.no_grad():
        expected = float(-flow.log_prob(x).mean())
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    assert nll(flow, x) == pytest.approx(expected, rel=rtol)
    assert nll(flow, x, batch_size=7) == pytest.approx(expected, rel=rtol)
    assert nll(flow, x.cpu().numpy()) == pytest.approx(expected, rel=rtol)
    assert bits_per_dim(flow, x) == pytest.approx(expected / (2 * math.log(2)), rel=rtol)
    with pytest.raises(ValueError, match="batch_size"):
        nll(flow, x, batch_size=0)


def test_inversion_error_of_a_flow_and_of_one_block(flow, dtype, device):
    x = torch.randn(200, 2, dtype=dtype, device=device)
    with torch.no_grad():
        expected = float((flow.forward(flow.inverse(x)) - x).norm(dim=1).mean())
    err = inversion_error(flow, x, batch_size=64)
    assert err == pytest.approx(expected, rel=1e-6)
    assert 0 < err < 1e-2
    block = flow.flows[0]
    assert inversion_error(block, x) == pytest.approx(block.inversion_error(x), rel=1e-6)


BAD_PAIRS = {
    "different dimensions": (torch.randn(5, 2), torch.randn(5, 3)),
    "is empty": (torch.randn(0, 2), torch.randn(5, 2)),
    "NaN or inf": (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.randn(5, 2)),
    "NaN or inf ": (torch.randn(5, 2), torch.tensor([[0.0, float("inf")]])),
    "must be 2-D": (torch.randn(3, 5, 2), torch.randn(3, 5, 2)),
    "must be 2-D ": (torch.randn(5), torch.randn(5)),
    "torch.Tensor or numpy": ([[0.0, 1.0]], torch.randn(5, 2)),
}


@pytest.mark.parametrize("message", sorted(BAD_PAIRS))
@pytest.mark.parametrize("metric", [wasserstein2, sinkhorn_divergence, mmd])
def test_bad_points_raise_value_error(metric, message):
    x, y = BAD_PAIRS[message]
    with pytest.raises(ValueError, match=message.strip()):
        metric(x, y)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": (torch.ones(4), torch.ones(5))}, r"weights\[0\] must have shape \(5,\)"),
        ({"weights": (torch.ones(5), torch.ones(5, 1))}, r"weights\[1\] must have shape"),
        ({"weights": (-torch.ones(5), torch.ones(5))}, "nonnegative"),
        ({"weights": (torch.zeros(5), torch.ones(5))}, "positive sum"),
        ({"weights": (torch.ones(5), torch.full((5,), float("nan")))}, "NaN"),
        ({"weights": torch.ones(5)}, "pair"),
        ({"backend": "keops"}, r"backend must be one of \['auto', 'geomloss', 'multiscale', 'online'"),
        ({"blur": 0.0}, r"blur must be finite and > 0, got 0\.0"),
        ({"scaling": 1.0}, "scaling must be below 1"),
        ({"tol": -1.0}, r"tol must be finite and > 0, got -1\.0"),
    ],
)
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wasserstein2(torch.randn(5, 2), torch.randn(5, 2), **kwargs)


def test_sparse_backend_refuses_high_dimension():
    with pytest.raises(ValueError, match="dimension <= 3"):
        wasserstein2(torch.randn(50, 4), torch.randn(50, 4), backend="sparse")


def test_backend_registry_lists_every_backend():
    assert sorted(BACKENDS) == ["geomloss", "multiscale", "online", "sparse", "tensorized"]
