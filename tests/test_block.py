import math

import normflows as nf
import pytest
import torch
from normflows.flows.flow_test import FlowTest

from jko_plugin import JKOBlock, solver_steps
from jko_plugin._ops import ACTIVATIONS, SOLVERS

from .flowcheck import check_flow, jacobian_logdet, perturb


def make_block(dim, dtype=torch.float64, device="cpu", **kw):
    block = JKOBlock(dim, **kw)
    perturb(block, 0.8)
    return block.to(device=device, dtype=dtype)


class TestNormflowsFlowTest(FlowTest):
    """normflows' own check: round trip is the identity and the two log-dets cancel."""

    def test_forward_inverse(self):
        for dim in (2, 5):
            with self.subTest(dim=dim):
                block = make_block(dim)
                z = torch.randn(16, dim, dtype=torch.float64)
                # forward then inverse are two RK4 solves; they agree to the solver's accuracy.
                self.checkForwardInverse(block, z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [1, 2, 5])
@pytest.mark.parametrize("time_dependent", [True, False])
def test_log_det_matches_autograd_jacobian(dim, time_dependent):
    block = make_block(dim, time_dependent=time_dependent, steps=8)
    x = torch.randn(6, dim, dtype=torch.float64)
    _, ld = block.inverse(x)
    ref = jacobian_logdet(lambda u: block.inverse(u)[0], x)
    assert ld.abs().min() > 1e-3, "map too close to the identity for a meaningful check"
    assert torch.all((ld - ref).abs() <= 1e-3 * ref.abs()), (ld, ref)
    _, ld_fwd = block.forward(x)
    ref_fwd = jacobian_logdet(lambda u: block.forward(u)[0], x)
    assert torch.all((ld_fwd - ref_fwd).abs() <= 1e-3 * ref_fwd.abs())


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_exact_trace_matches_autograd(activation):
    block = make_block(3, activation=activation)
    x = torch.randn(7, 3, dtype=torch.float64)
    v, tr = block.velocity.forward_with_trace(x, 0.3)
    torch.testing.assert_close(v, block.velocity(x, 0.3))
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda u: block.velocity(u.unsqueeze(0), 0.3)[0], x[i])
        torch.testing.assert_close(tr[i], torch.trace(J))


def test_hutchinson_is_unbiased():
    block = make_block(4)
    x = torch.randn(3, 4, dtype=torch.float64).repeat_interleave(20000, 0)
    _, exact = block.velocity.forward_with_trace(x, 0.5)
    probes = torch.randint(0, 2, (x.shape[0], 1, 4), dtype=torch.float64) * 2 - 1
    _, est = block.velocity.forward_with_trace(x, 0.5, probes)
    est = est.view(3, -1)
    se = est.std(1) / math.sqrt(est.shape[1])
    assert torch.all((est.mean(1) - exact.view(3, -1)[:, 0]).abs() < 5 * se + 1e-12)
    assert torch.all(est.std(1) > 0)


def test_trace_mode_selection():
    x = torch.randn(5, 2)
    torch.manual_seed(1)
    a = JKOBlock(2, trace="hutchinson")
    a.train()
    _, ld1 = a.inverse(x)
    _, ld2 = a.inverse(x)
    assert not torch.equal(ld1, ld2), "training with Hutchinson must draw fresh probes"
    with torch.no_grad():
        _, e1 = a.inverse(x)
        _, e2 = a.inverse(x)
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)  # evaluation is always exact


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_solvers_round_trip(solver):
    block = make_block(2, solver=solver, steps=32)
    # Round-trip error is the solver's: first order for Euler, second for Heun, fourth for RK4.
    atol = {"euler": 2e-2, "heun": 1e-4, "rk4": 1e-6}[solver]
    check_flow(block, torch.randn(10, 2, dtype=torch.float64), atol=atol)


def test_float32_and_device(device):
    block = make_block(2, dtype=torch.float32, device=device)
    x = torch.randn(8, 2, device=device)
    check_flow(block, x, atol=1e-4)


def test_transport_terms_in_one_pass():
    block = make_block(2, steps=4)
    block.set_interval(0.0, 0.5)
    x = torch.randn(9, 2, dtype=torch.float64)
    out = block.transport(x)
    z, ld = block.inverse(x)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(out.log_det, ld)
    torch.testing.assert_close(out.sq_displacement, (z - x).square().sum(-1))
    # Kinetic energy against a fine Riemann sum of |dx/dt|^2 along the same path.
    fine = make_block(2, steps=400)
    fine.load_state_dict(block.state_dict())
    n = fine.steps
    xt, kin = x.clone(), torch.zeros(9, dtype=torch.float64)
    t0, t1 = 0.0, 0.5
    dt = (t1 - t0) / n
    for k in range(n):
        t = t0 + (k + 0.5) * dt
        mid = xt + 0.5 * dt * fine.velocity_at(xt, t0 + k * dt)
        v = fine.velocity_at(mid, t)
        kin += v.square().sum(-1) * dt
        xt = xt + dt * v
    torch.testing.assert_close(out.kinetic_energy, kin, rtol=1e-3, atol=1e-8)
    # Cauchy-Schwarz: the kinetic energy bounds the squared displacement over the duration.
    assert torch.all(out.kinetic_energy * block.duration >= out.sq_displacement * (1 - 1e-9))


def test_interval_changes_kinetic_energy_not_the_map():
    block = make_block(2)
    x = torch.randn(5, 2, dtype=torch.float64)
    a = block.transport(x)
    block.set_interval(1.0, 1.25)
    b = block.transport(x)
    torch.testing.assert_close(a.z, b.z)
    torch.testing.assert_close(b.kinetic_energy, a.kinetic_energy * 4)


def test_inversion_error():
    block = make_block(2, steps=1)
    x = torch.randn(50, 2, dtype=torch.float64)
    z, _ = block.inverse(x)
    ref = (block.forward(z)[0] - x).norm(dim=-1).mean()
    assert block.inversion_error(x) == pytest.approx(float(ref.detach()))
    fine = make_block(2, steps=16)
    fine.load_state_dict(block.state_dict())
    assert fine.inversion_error(x) < block.inversion_error(x)


def test_state_dict_round_trip():
    block = make_block(3)
    block.set_interval(0.5, 0.75)
    other = JKOBlock(**block.config()).double()
    other.load_state_dict(block.state_dict())
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(other.inverse(x)[0], block.inverse(x)[0], rtol=0, atol=0)
    assert other.config() == block.config()


def test_density_integrates_to_one():
    torch.manual_seed(3)
    flows = [make_block(2, dtype=torch.float32) for _ in range(3)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows).double()
    n, lim = 200, 6.5
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)
    with torch.no_grad():
        logp = torch.cat([model.log_prob(c) for c in pts.split(20000)])
    mass = logp.exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1.0) < 0.01
    # The map is not the identity: the density differs from the base's.
    base = model.q0.log_prob(pts)
    assert (logp - base).abs().max() > 0.1


def test_mixed_normflows_model_trains_with_forward_kld():
    torch.manual_seed(0)
    param_map = nf.nets.MLP([1, 16, 2], init_zeros=True)
    flows = [
        nf.flows.ActNorm(2),
        JKOBlock(2, hidden=(32,), steps=2),
        nf.flows.AffineCouplingBlock(param_map),
        nf.flows.Permute(2, mode="swap"),
        JKOBlock(2, hidden=(32,), steps=2),
    ]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    data = torch.randn(256, 2) * torch.tensor([0.5, 0.3]) + torch.tensor([1.0, -1.0])
    data[:, 1] += data[:, 0] ** 2
    # NLL of the best Gaussian fit: a model that learnt the curvature must beat it.
    gauss_nll = 0.5 * torch.logdet(2 * math.pi * math.e * torch.cov(data.T))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(80):
        loss = model.forward_kld(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert sum(losses[-5:]) / 5 < float(gauss_nll) - 0.1
    model.eval()
    with torch.no_grad():
        x, log_q = model.sample(64)
        torch.testing.assert_close(model.log_prob(x), log_q, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps"),
        (dict(solver="rk5"), "solver must be one of"),
        (dict(hidden=()), "hidden"),
        (dict(trace="hutch"), "trace must be one of"),
        (dict(activation="relu6"), "activation must be one of"),
        (dict(num_probes=0), "num_probes"),
        (dict(interval=(1.0, 1.0)), "interval"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JKOBlock(2, **kwargs)


def test_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        JKOBlock(0)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(4, 3), "trailing dimension 3"),
        (torch.randn(4), "2-D"),
        (torch.randn(2, 4, 2), "2-D"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), "NaN or inf in 1 of 2 rows"),
        (torch.tensor([[0.0, float("inf")]]), "NaN or inf"),
    ],
)
def test_bad_input(x, match):
    block = JKOBlock(2)
    for call in (block.inverse, block.forward, block.transport):
        with pytest.raises(ValueError, match=match):
            call(x)


def test_solver_steps_gives_the_odes_normalised_density():
    # A sharp velocity integrated with one RK4 step: the integrated divergence is off from the
    # Jacobian of the one-step map, and the density's mass is off from 1. solver_steps(flow, 32)
    # integrates the ODE finely: normalised, log-det = autograd's, and the steps come back after.
    torch.manual_seed(1)
    block = JKOBlock(2, hidden=(32, 32), steps=1)
    perturb(block, scale=1.5)
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), [block]).double()
    model.eval()
    g = torch.linspace(-7.0, 7.0, 161, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)

    def mass() -> float:
        with torch.no_grad():
            return float(model.log_prob(pts).exp().sum() * (g[1] - g[0]) ** 2)

    coarse = mass()
    with solver_steps(model, 32) as same:
        assert same is model and block.steps == 32
        fine = mass()
        x = torch.randn(6, 2, dtype=torch.float64)
        ref = jacobian_logdet(lambda u: block.inverse(u)[0], x)
        with torch.no_grad():
            torch.testing.assert_close(block.inverse(x)[1], ref, rtol=1e-4, atol=1e-4)
    assert block.steps == 1
    assert abs(fine - 1.0) < 2e-3
    assert abs(coarse - 1.0) > 0.02, coarse
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        with solver_steps(model, 0):
            pass


class _LinearVelocity(torch.nn.Module):
    """f(x, s) = A x; with A nilpotent (A^2 = 0) the flow is x + s A x, which RK4 integrates exactly
    with any number of steps, and the divergence tr(A) is constant."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, x, s):
        return x @ self.a.T


def test_solver_gap_is_the_trained_steps_log_q_minus_the_odes():
    from jko_plugin.workflows import NLL_SOLVER_STEPS, solver_gap

    x = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    base = nf.distributions.DiagGaussian(2, trainable=False)
    torch.manual_seed(1)
    sharp = JKOBlock(2, hidden=(32, 32), steps=1)
    perturb(sharp, scale=1.5)
    model = nf.NormalizingFlow(base, [sharp]).double().train()
    with torch.no_grad():
        coarse = float(model.log_prob(x).mean())
        with solver_steps(model, NLL_SOLVER_STEPS):
            fine = float(model.log_prob(x).mean())
    gap = solver_gap(model, x)
    assert abs(gap - (coarse - fine)) < 1e-10 and abs(gap) > 1e-3
    assert sharp.steps == 1 and model.training  # the flow comes back as it was
    # A shear: 1 RK4 step is the ODE's map and log-det exactly, so the gap is 0.
    a = torch.tensor([[0.0, 1.5], [0.0, 0.0]], dtype=torch.float64)
    linear = nf.NormalizingFlow(base, [JKOBlock(2, steps=1, velocity=_LinearVelocity(a))]).double()
    assert abs(solver_gap(linear, x)) < 1e-12
    # An exact map is scored as trained: no gap by construction.
    exact = nf.NormalizingFlow(base, [make_block(2, hidden=(16,), steps=1, density="map")]).double()
    assert solver_gap(exact, x) == 0.0


# -- the exact map density: one discretisation for training, sampling and scoring ------------------
@pytest.mark.parametrize("steps", [1, 2])
def test_exact_map_log_det_and_inverse(steps):
    block = make_block(2, hidden=(16, 16), steps=steps, density="map")
    assert block.exact_map and block.nfe == (2 + 2) * steps * 4  # reverse solve, <= 2 Newton steps, log-det
    x = torch.randn(40, 2, dtype=torch.float64)
    z, ld = block.inverse(x)
    # log|det| of the solver map itself, against autograd's Jacobian of the same map
    torch.testing.assert_close(
        ld[:6], jacobian_logdet(lambda u: block.inverse(u)[0], x[:6]), rtol=0, atol=1e-12
    )
    # forward inverts that map to machine precision (Newton on the reverse-time solve)
    check_flow(block, x, atol=1e-10)
    # the ODE-density block with the same weights differs from its own map by the solver error
    ode = JKOBlock(2, (16, 16), steps=steps).double()
    ode.load_state_dict(block.state_dict())
    assert ode.inversion_error(x) > 1e3 * block.inversion_error(x)
    rebuilt = JKOBlock(**block.config())
    assert rebuilt.exact_map and rebuilt.newton_steps == 2


def test_exact_map_density_integrates_to_one_with_one_rk4_step():
    # With one RK4 step per block the divergence integral is visibly off (test_solver_steps_...);
    # the map's own Jacobian makes the coarse map a normalised density.
    torch.manual_seed(3)
    flows = [make_block(2, dtype=torch.float32, steps=1, density="map") for _ in range(3)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows).double()
    n, lim = 200, 6.5
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.ravel(), yy.ravel()], 1)
    with torch.no_grad():
        logp = torch.cat([model.log_prob(c) for c in pts.split(20000)])
    assert abs(float(logp.exp().sum() * (g[1] - g[0]) ** 2) - 1.0) < 1e-3


def test_auto_density_follows_the_dimension():
    from jko_plugin.steps.block import EXACT_MAP_MAX_DIM

    assert JKOBlock(EXACT_MAP_MAX_DIM, (8,), density="auto").exact_map
    assert not JKOBlock(EXACT_MAP_MAX_DIM + 1, (8,), density="auto").exact_map
    with pytest.raises(ValueError, match="density must be one of"):
        JKOBlock(2, density="exact")
