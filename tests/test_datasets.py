import math

import numpy as np
import pytest
import torch

from jko_plugin import datasets as ds
from jko_plugin.datasets import (
    DATASETS,
    GaussianMixture,
    checkerboard_log_prob,
    eight_gaussians_log_prob,
    get_dataset,
    load_dataset,
    load_maf,
    load_samples,
    maf,
    moons_log_prob,
    toys,
    train_test_split,
    two_moons,
)

TOYS = [
    "moons",
    "circles",
    "8gaussians",
    "checkerboard",
    "pinwheel",
    "2spirals",
    "gmm3",
    "gmm16",
    "rose",
    "tree",
]


def grid(lo, hi, n):
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.ravel(), yy.ravel()], 1), float(g[1] - g[0]) ** 2


# -- shapes, dtypes, determinism ---------------------------------------------------------------
@pytest.mark.parametrize("name", TOYS)
def test_shape_dtype_and_determinism(name):
    d = get_dataset(name)
    a = load_dataset(name, 301, seed=3)
    assert a.shape == (301, d.dim) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, load_dataset(name, 301, seed=3))
    assert not torch.equal(a, load_dataset(name, 301, seed=4))
    # numpy and torch generators are accepted and reproducible
    b = d.sample(50, seed=np.random.default_rng(1))
    assert torch.equal(b, d.sample(50, seed=np.random.default_rng(1)))
    c = d.sample(50, seed=torch.Generator().manual_seed(1))
    assert torch.equal(c, d.sample(50, seed=torch.Generator().manual_seed(1)))


def test_bad_names_and_sizes():
    with pytest.raises(ValueError, match=r"dataset must be one of \[.*'moons'.*gmm<d>.*got 'moon'"):
        get_dataset("moon")
    with pytest.raises(ValueError, match="gmm<d>"):
        get_dataset("gmm65")
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        load_dataset("moons", 0, seed=0)
    with pytest.raises(ValueError, match="seed must be"):
        load_dataset("moons", 5, seed="zero")
    with pytest.raises(ValueError, match="noise must be >= 0"):
        two_moons(5, seed=0, noise=-1.0)


def test_registry_is_complete():
    assert set(DATASETS) == {
        "moons",
        "circles",
        "8gaussians",
        "checkerboard",
        "pinwheel",
        "2spirals",
        "digits",
        "rose",
        "tree",
    }
    assert get_dataset("gmm64").dim == 64 and get_dataset("gmm2").dim == 2


# -- exact densities ---------------------------------------------------------------------------
@pytest.mark.parametrize("noise,standardize", [(0.05, True), (0.1, False)])
def test_moons_density_integrates_to_one(noise, standardize):
    # grid steps well below the noise's standard deviation: the Riemann sum is exact to ~1e-10
    pts, cell = grid(-4.0, 4.0, 201) if standardize else grid(-2.0, 3.0, 151)
    p = moons_log_prob(pts, noise=noise, standardize=standardize).exp()
    assert abs(float(p.sum()) * cell - 1.0) < 1e-6


def test_moons_density_matches_adaptive_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    x = torch.tensor([[0.3, 0.9], [1.0, -0.4], [-0.9, 0.2], [0.5, 0.25], [2.1, 0.6]], dtype=torch.float64)
    noise = 0.05

    def density(p):
        # raw coordinates: 1/2 sum over moons of (1/pi) int N(p; c(t), noise^2 I) dt
        total = 0.0
        for centre in (lambda t: (math.cos(t), math.sin(t)), lambda t: (1 - math.cos(t), 0.5 - math.sin(t))):

            def f(t, centre=centre):
                cx, cy = centre(t)
                return math.exp(-((p[0] - cx) ** 2 + (p[1] - cy) ** 2) / (2 * noise**2))

            total += integrate.quad(
                f, 0, math.pi, points=np.linspace(0, math.pi, 40)[1:-1], limit=400, epsabs=0, epsrel=1e-11
            )[0]
        return total / (2 * math.pi) / (2 * math.pi * noise**2)

    raw = x * torch.tensor(ds.MOONS_SCALE, dtype=torch.float64) + torch.tensor(
        ds.MOONS_SHIFT, dtype=torch.float64
    )
    ref = torch.tensor([math.log(density(p.tolist())) for p in raw], dtype=torch.float64) + math.log(
        0.87 * 0.5
    )
    got = moons_log_prob(x, noise=noise)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-7)
    # more panels change nothing: the quadrature has converged
    torch.testing.assert_close(moons_log_prob(x, panels=512), got, rtol=0, atol=1e-10)


def test_moons_true_nll_by_monte_carlo():
    # DESIGN.md: the standardised noise-0.05 moons have a true test NLL of 1.123 nats.
    x = two_moons(20000, seed=0, noise=0.05, standardize=True)
    nll = -moons_log_prob(x).double()
    assert abs(float(nll.mean()) - 1.123) < 4 * float(nll.std()) / math.sqrt(len(nll)) + 0.003


def test_eight_gaussians_density():
    stats = pytest.importorskip("scipy.stats")
    x = load_dataset("8gaussians", 20, seed=0).double()
    ref = np.log(
        sum(
            stats.multivariate_normal(c, (0.5 / 1.414) ** 2 * np.eye(2)).pdf(x.numpy())
            for c in toys._EIGHT_CENTRES
        )
        / 8
    )
    torch.testing.assert_close(eight_gaussians_log_prob(x), torch.from_numpy(ref), rtol=1e-10, atol=1e-10)
    pts, cell = grid(-5.0, 5.0, 301)
    assert abs(float(eight_gaussians_log_prob(pts).exp().sum()) * cell - 1.0) < 1e-3


def test_checkerboard_density():
    x = load_dataset("checkerboard", 5000, seed=0)
    assert torch.all(checkerboard_log_prob(x) == -math.log(32.0))
    pts, cell = grid(-4.5, 4.5, 401)
    assert abs(float(checkerboard_log_prob(pts).exp().sum()) * cell - 1.0) < 0.03
    assert checkerboard_log_prob(torch.tensor([[1.0, -1.0], [5.0, 0.5]]))[0:2].isinf().all()


def test_gaussian_mixture_log_prob_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    gmm = GaussianMixture.random(5, 3, seed=2)
    x = gmm.sample(40, seed=0).double()
    covs = gmm.scale_trils @ gmm.scale_trils.transpose(-1, -2)
    pdf = sum(
        float(w) * stats.multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
        for w, m, c in zip(gmm.weights, gmm.means, covs)
    )
    torch.testing.assert_close(gmm.log_prob(x), torch.from_numpy(np.log(pdf)), rtol=1e-9, atol=1e-9)
    assert gmm.log_prob(x.float()).dtype == torch.float32


def test_gaussian_mixture_samples_have_the_mixture_moments():
    gmm = GaussianMixture.random(4, 8, seed=0)
    x = gmm.sample(100000, seed=1).double()
    mean = gmm.weights @ gmm.means
    covs = gmm.scale_trils @ gmm.scale_trils.transpose(-1, -2)
    second = (gmm.weights[:, None, None] * (covs + gmm.means[:, :, None] * gmm.means[:, None, :])).sum(0)
    torch.testing.assert_close(gmm.mean, mean, atol=1e-12, rtol=0)  # the exact moments, by formula
    torch.testing.assert_close(gmm.covariance, second - torch.outer(mean, mean), atol=1e-12, rtol=0)
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), second - torch.outer(mean, mean), atol=0.06, rtol=0)


def test_gaussian_mixture_2d_integrates_to_one_and_validates():
    gmm = GaussianMixture.random(2, 8, seed=5)
    pts, cell = grid(-8.0, 8.0, 401)
    assert abs(float(gmm.log_prob(pts).exp().sum()) * cell - 1.0) < 1e-3
    with pytest.raises(ValueError, match="scale_trils must have shape"):
        GaussianMixture(torch.zeros(2, 3), torch.eye(2).expand(2, 2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="weights must be 2 positive"):
        GaussianMixture(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        gmm.log_prob(torch.zeros(3, 4))


# -- digits ------------------------------------------------------------------------------------
def test_digits():
    pytest.importorskip("sklearn")
    x = ds.digits(seed=0)
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    torch.testing.assert_close(x.double().mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        x.double().std(0, unbiased=False), torch.ones(64, dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert torch.equal(load_dataset("digits", 100, seed=0), x[:100])
    assert not torch.equal(ds.digits(seed=1)[:100], x[:100])
    assert x.unique(dim=0).shape[0] == 1797  # dequantised: no duplicates
    with pytest.raises(ValueError, match="at most 1797"):
        load_dataset("digits", 1798, seed=0)


# -- user files --------------------------------------------------------------------------------
def test_load_samples_npy_and_csv(tmp_path):
    a = np.random.default_rng(0).standard_normal((20, 3))
    np.save(tmp_path / "a.npy", a)
    np.savetxt(tmp_path / "a.csv", a, delimiter=",")
    np.savetxt(tmp_path / "h.csv", a, delimiter=",", header="x,y,z", comments="")
    for name in ("a.npy", "a.csv", "h.csv"):
        x = load_samples(tmp_path / name)
        assert x.dtype == torch.float32 and x.shape == (20, 3)
        torch.testing.assert_close(x, torch.from_numpy(a).float())


def test_load_samples_bad_files(tmp_path):
    bad = np.ones((10, 2))
    bad[[1, 4], 0] = np.nan
    bad[6, 1] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match="NaN or inf in 3 of 10 rows"):
        load_samples(tmp_path / "bad.npy")
    np.save(tmp_path / "one.npy", np.ones(5))
    with pytest.raises(ValueError, match="2-D"):
        load_samples(tmp_path / "one.npy")
    np.save(tmp_path / "empty.npy", np.ones((0, 2)))
    with pytest.raises(ValueError, match="empty"):
        load_samples(tmp_path / "empty.npy")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty"), pytest.warns(UserWarning):
        load_samples(tmp_path / "e.csv")
    with pytest.raises(ValueError, match=r"\.npy or \.csv"):
        load_samples(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_samples(tmp_path / "missing.npy")


def test_train_test_split():
    x = torch.arange(100.0).reshape(50, 2)
    tr, te = train_test_split(x, 0.2, seed=1)
    assert tr.shape == (40, 2) and te.shape == (10, 2)
    assert sorted(torch.cat([tr, te])[:, 0].tolist()) == x[:, 0].tolist()
    tr2, te2 = train_test_split(x, 0.2, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    with pytest.raises(ValueError, match="test_fraction must lie in"):
        train_test_split(x, 1.0)


# -- MAF benchmarks on synthetic files ---------------------------------------------------------
def test_power(tmp_path):
    raw = np.random.default_rng(0).standard_normal((1000, 8)) * np.arange(1, 9)
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    s = load_maf("power", tmp_path)
    assert (s.train.shape, s.validation.shape, s.test.shape) == ((810, 6), (90, 6), (100, 6))
    both = torch.cat([s.train, s.validation]).double()
    torch.testing.assert_close(both.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        both.std(0, unbiased=False), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0
    )
    # the reference recipe: shuffle with RandomState(42), drop columns 3 and 1, add the noise
    rng = np.random.RandomState(42)
    data = raw.copy()
    rng.shuffle(data)
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    v, g, sm = 0.01 * rng.rand(1000, 1), 0.001 * rng.rand(1000, 1), rng.rand(1000, 3)
    data = data + np.hstack((g, v, sm, np.zeros((1000, 1))))
    test = data[-100:]
    mu, sd = data[:900].mean(0), data[:900].std(0)
    torch.testing.assert_close(s.test, torch.from_numpy((test - mu) / sd).float())
    # root may also be the dataset's own folder
    assert torch.equal(load_maf("POWER", tmp_path / "power").test, s.test)


def test_miniboone(tmp_path):
    raw = np.random.default_rng(1).standard_normal((500, 43)) * 3 + 1
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    s = load_maf("miniboone", tmp_path)
    assert (s.train.shape, s.validation.shape, s.test.shape) == ((405, 43), (45, 43), (50, 43))
    mu, sd = raw[:450].mean(0), raw[:450].std(0)
    torch.testing.assert_close(s.test, torch.from_numpy((raw[450:] - mu) / sd).float())


def _hepmass_rows(rng, n):
    label = rng.integers(0, 2, size=(n, 1)).astype(float)
    feats = rng.standard_normal((n, 27))
    feats[:, 5] = np.where(rng.uniform(size=n) < 0.5, feats[:, 5].min() - 1, feats[:, 5])  # repeated minimum
    mass = rng.choice([500.0, 750.0, 1000.0], size=(n, 1))
    return np.hstack([label, feats, mass])


def test_hepmass(tmp_path):
    rng = np.random.default_rng(2)
    train, test = _hepmass_rows(rng, 400), _hepmass_rows(rng, 200)
    folder = tmp_path / "hepmass"
    folder.mkdir()
    header = "# label," + ",".join(f"f{i}" for i in range(27)) + ",mass"
    np.savetxt(folder / "1000_train.csv", train, delimiter=",", header=header, comments="")
    np.savetxt(folder / "1000_test.csv", test, delimiter=",", header=header, comments="")
    s = load_maf("hepmass", tmp_path)
    pos = train[train[:, 0] == 1][:, 1:]
    keep = [i for i in range(27) if i != 5]  # f5 and mass recur, the other 26 features stay
    n_val = int(0.1 * len(pos))
    assert s.train.shape == (len(pos) - n_val, 26) and s.validation.shape == (n_val, 26)
    assert s.test.shape == (int((test[:, 0] == 1).sum()), 26)
    mu, sd = pos.mean(0), pos.std(0, ddof=1)
    ref = ((test[test[:, 0] == 1][:, 1:28] - mu[:27]) / sd[:27])[:, keep]
    torch.testing.assert_close(s.test, torch.from_numpy(ref).float())


def test_gas_cleaning_drops_correlated_columns():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((300, 4))
    data = np.hstack([a, 2 * a[:, :1] + 1e-3 * rng.standard_normal((300, 1))])  # column 4 ~ column 0
    out = maf._gas_clean(data)
    ref = data[:, 1:]
    torch.testing.assert_close(
        torch.from_numpy(out), torch.from_numpy((ref - ref.mean(0)) / ref.std(0, ddof=1))
    )


def test_gas_pickle(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(4)
    sensors = rng.standard_normal((200, 5))
    sensors[:, 4] = sensors[:, 0] * 3 + 1e-3 * rng.standard_normal(200)
    frame = pd.DataFrame(sensors, columns=[f"s{i}" for i in range(5)])
    for i, col in enumerate(("Time", "Meth", "Eth")):
        frame.insert(i, col, rng.uniform(size=200))
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    s = load_maf("gas", tmp_path)
    assert (s.train.shape, s.validation.shape, s.test.shape) == ((162, 4), (18, 4), (20, 4))


def test_bsds300(tmp_path):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "BSDS300").mkdir()
    rng = np.random.default_rng(5)
    arrays = {k: rng.standard_normal((n, 63)) for k, n in (("train", 50), ("validation", 10), ("test", 20))}
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in arrays.items():
            f[k] = v
    s = load_maf("bsds300", tmp_path)
    torch.testing.assert_close(s.test, torch.from_numpy(arrays["test"]).float())


def test_maf_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*power[/\\]data\.npy"):
        load_maf("power", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"hepmass: missing file .*hepmass[/\\]1000_train\.csv"):
        load_maf("hepmass", tmp_path)
    with pytest.raises(
        ValueError, match=r"name must be one of \['bsds300', 'gas', 'hepmass', 'miniboone', 'power'\]"
    ):
        load_maf("mnist", tmp_path)
