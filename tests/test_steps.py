"""The step contract, one parametrised test for every kind: JKOBlock, spline JKOStep, hand-made JKOStep."""

import functools
import json

import normflows as nf
import pytest
import torch

from jko_plugin import STEP_KINDS, JKOBlock, JKOStep, ProximalStep, make_flow
from jko_plugin.steps import flow_nfe
from jko_plugin.steps.kinds import make_coupling_step, make_spline_step
from jko_plugin.steps.layers import layer_nfe

from .flowcheck import check_flow, perturb, spline_bins

DIM = 3


def ode_block():
    return JKOBlock(DIM, (16,), steps=3)


def spline_step():
    return make_spline_step(DIM, layers=2, hidden=8)


def hand_made_step():
    return JKOStep(
        [nf.flows.LULinearPermute(DIM), nf.flows.CoupledRationalQuadraticSpline(DIM, 1, 8)], dim=DIM
    )


def coupling_step():
    return make_coupling_step(DIM, layers=2, hidden=8)


KINDS = {"ode": ode_block, "spline": spline_step, "coupling": coupling_step, "map": hand_made_step}


def placed(make, t0=0.5, t1=1.25):
    step = make().double()
    perturb(step, 0.6)
    step.set_interval(t0, t1)
    return step


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_contract(kind):
    step = placed(KINDS[kind])
    assert isinstance(step, ProximalStep) and step.kind == kind and step.dim == DIM
    assert step.block_type == ("ode" if kind == "ode" else "map")
    assert step.time_interval == (0.5, 1.25) and step.duration == 0.75
    x = torch.randn(16, DIM, dtype=torch.float64)
    check_flow(step, x, atol=1e-8 if kind != "ode" else 1e-5)
    # transport: the data -> latent pass with the JKO loss terms, from the same map
    out = step.transport(x)
    z, ld = step.inverse(x)
    torch.testing.assert_close(out.z, z)
    torch.testing.assert_close(out.log_det, ld)
    torch.testing.assert_close(out.sq_displacement, (z - x).square().sum(-1))
    with torch.no_grad():
        back = step.forward(step.inverse(x)[0])[0]
    assert step.inversion_error(x) == pytest.approx(float((back - x).norm(dim=-1).mean()))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_config_rebuilds_the_step(kind):
    step = placed(KINDS[kind])
    config = json.loads(json.dumps(step.config()))  # JSON all the way
    fresh = type(step).from_config(config).double()
    assert type(fresh) is type(step) and fresh.kind == step.kind
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in step.state_dict().items()
    }
    fresh.load_state_dict(step.state_dict())
    fresh.set_interval(*step.time_interval)
    z = torch.randn(8, DIM, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(step(z), fresh(z)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nfe_counts_the_network_passes_of_forward(kind):
    step = placed(KINDS[kind])
    calls = []
    if kind == "ode":
        # one velocity evaluation = one call of the MLP's output layer
        hooks = [step.velocity.layers[-1].register_forward_hook(lambda *a: calls.append(1))]
    else:
        hooks = []
        for layer in step.flows:
            net = getattr(getattr(layer, "mprqat", None), "autoregressive_net", None)
            net = net or getattr(getattr(layer, "prqct", None), "transform_net", None)
            if net is not None:
                hooks.append(net.register_forward_hook(lambda *a: calls.append(1)))
    with torch.no_grad():
        step.forward(torch.randn(4, DIM, dtype=torch.float64))
    for h in hooks:
        h.remove()
    assert len(calls) == step.nfe == layer_nfe(step, DIM)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_velocity_at_is_what_a_sampler_integrates(kind):
    step = placed(KINDS[kind])
    t0, t1 = step.time_interval
    x = torch.randn(8, DIM, dtype=torch.float64)
    with torch.no_grad():
        target = step.forward(x)[0]
        if kind == "ode":
            # RK4 in flow time from t1 down to t0 with the block's own number of steps = forward
            y, n = x, step.steps
            dt = -(t1 - t0) / n
            for i in range(n):
                t = t1 + i * dt
                k1 = step.velocity_at(y, t)
                k2 = step.velocity_at(y + dt / 2 * k1, t + dt / 2)
                k3 = step.velocity_at(y + dt / 2 * k2, t + dt / 2)
                k4 = step.velocity_at(y + dt * k3, t + dt)
                y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            torch.testing.assert_close(y, target, rtol=0, atol=1e-12)
        else:
            # one Euler jump of -h from t1 lands on the map
            torch.testing.assert_close(x - (t1 - t0) * step.velocity_at(x, t1), target, rtol=0, atol=1e-12)
            with pytest.raises(ValueError, match="defined at t = 1.25 only"):
                step.velocity_at(x, 0.9)


def test_registry_builds_every_kind_through_make_flow():
    for name, kind in STEP_KINDS.items():
        flow = make_flow(2, 2, block=name)
        assert all(f.kind == name for f in flow.flows)
        assert kind.run_defaults["num_blocks"] >= 1
    with pytest.raises(
        ValueError, match="block must be one of \\['coupling', 'grid', 'ode', 'spline'\\], got 'flow'"
    ):
        make_flow(2, 2, block="flow")
    with pytest.raises(ValueError, match="bad options \\['steps'\\] for block='spline'"):
        make_flow(2, 2, block="spline", steps=3)


def test_flow_nfe_sums_the_layers():
    flow = make_flow(2, 3, block="ode", hidden=(8,), steps=2)
    assert flow_nfe(flow) == 3 * 2 * 4
    flow.flows.insert(1, nf.flows.ActNorm(2))
    assert flow_nfe(flow) == 24
    flow.flows.insert(1, nf.flows.Planar((2,)))
    with pytest.raises(ValueError, match="cannot count the network evaluations of a Planar layer"):
        flow_nfe(flow)


@pytest.mark.parametrize(
    "make", [make_coupling_step, functools.partial(make_coupling_step, mix="none"), make_spline_step]
)
def test_spline_steps_start_at_the_identity(make):
    step = make(DIM, hidden=8).double()
    x = torch.randn(64, DIM, dtype=torch.float64) * 2
    with torch.no_grad():
        for y, ld in (step(x), step.inverse(x)):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
            torch.testing.assert_close(ld, torch.zeros_like(ld), rtol=0, atol=1e-6)
    perturb(step, 0.5)  # trained away from the identity: still an exact, invertible map
    check_flow(step, x, atol=1e-8)
    from .flowcheck import jacobian_logdet

    torch.testing.assert_close(step.inverse(x[:4])[1], jacobian_logdet(lambda u: step.inverse(u)[0], x[:4]))


@pytest.mark.parametrize("make", [make_coupling_step, make_spline_step])
@pytest.mark.parametrize("mix", ["permute", "lu"])
def test_steps_that_mix_coordinates(make, mix):
    torch.manual_seed(0)
    dim = 6
    steps = [make(dim, hidden=8, mix=mix).double() for _ in range(3)]
    step = steps[0]
    x = torch.randn(64, dim, dtype=torch.float64) * 2
    with torch.no_grad():
        for y, ld in (step(x), step.inverse(x)):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
            torch.testing.assert_close(ld, torch.zeros_like(ld), rtol=0, atol=1e-6)
    perturb(step, 0.5)
    check_flow(step, x, atol=1e-8)
    from .flowcheck import jacobian_logdet

    torch.testing.assert_close(step.inverse(x[:4])[1], jacobian_logdet(lambda u: step.inverse(u)[0], x[:4]))
    # a saved step rebuilds the same map: the permutation (or LU parameters) travel in config/state
    fresh = JKOStep.from_config(json.loads(json.dumps(step.config()))).double()
    fresh.load_state_dict(step.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.inverse(x)[0], step.inverse(x)[0], rtol=0, atol=0)
    assert step.nfe == make(dim, hidden=8, mix="none").nfe  # the mixing layers cost no network pass
    if mix == "permute":
        # each step draws its own order, and its last layer undoes its first
        orders = [s.flows[0].perm.tolist() for s in steps]
        assert len({tuple(o) for o in orders}) == 3
        for s in steps:
            assert torch.equal(s.flows[0].perm[s.flows[-1].perm], torch.arange(dim))
    else:
        # data -> latent, the LU layer is the affine map x W^T + b with log|det W|
        lu = step.flows[0]
        w, b = lu.linear.weight().detach(), lu.linear.bias.detach()
        y, ld = lu.inverse(x)
        torch.testing.assert_close(y, x @ w.T + b)
        torch.testing.assert_close(ld, torch.linalg.slogdet(w)[1].expand(len(x)))
    with pytest.raises(ValueError, match="mix must be one of"):
        make(dim, mix="shuffle")


def test_spline_bins_default_by_dimension_and_run_config():
    from jko_plugin.steps.kinds import FINE_SPLINE_MAX_DIM, default_spline_bins
    from jko_plugin.workflows import RunConfig, build_flow

    assert spline_bins(make_flow(FINE_SPLINE_MAX_DIM, 1, block="spline")) == {16}
    assert spline_bins(make_flow(FINE_SPLINE_MAX_DIM + 1, 1, block="spline")) == {8}
    assert spline_bins(make_flow(2, 1, block="spline", bins=5)) == {5}
    assert spline_bins(build_flow(RunConfig(num_blocks=1), 2)) == {default_spline_bins(2)}
    assert spline_bins(build_flow(RunConfig(num_blocks=1, spline_bins=12), 3)) == {12}
    with pytest.raises(ValueError, match="bins"):
        make_flow(2, 1, block="spline", bins=0)


def test_velocity_default_by_dimension_and_run_config():
    from jko_plugin.steps.block import SMALL_VELOCITY_MAX_DIM, default_velocity
    from jko_plugin.workflows import RunConfig, build_flow

    def velocities(flow):
        return {(s.hidden, s.activation) for s in flow.flows if isinstance(s, JKOBlock)}

    small, large = ((64, 64), "tanh"), ((64, 64, 64), "silu")
    assert velocities(make_flow(SMALL_VELOCITY_MAX_DIM, 2, block="ode")) == {small}
    assert velocities(make_flow(SMALL_VELOCITY_MAX_DIM + 1, 2, block="ode")) == {large}
    assert JKOBlock(16, activation="elu").activation == "elu" and JKOBlock(16, (8,)).hidden == (8,)
    assert [len(s.velocity.layers) for s in make_flow(16, 1, block="ode").flows[:1]] == [4]
    assert velocities(build_flow(RunConfig(block="ode", num_blocks=2), 2)) == {small}
    assert velocities(build_flow(RunConfig(block="ode", num_blocks=2), 16)) == {large}
    assert default_velocity(16) == {"hidden": large[0], "activation": large[1]}
    tanh = RunConfig(block="ode", num_blocks=2, hidden=[64, 64], activation="tanh")
    assert velocities(build_flow(tanh, 16)) == {small}
    # The resolved network is saved: a rebuilt block is the same map whatever the default becomes.
    config = JKOBlock(16).config()
    assert (config["hidden"], config["activation"]) == ([64, 64, 64], "silu")
    with pytest.raises(ValueError, match="activation must be one of"):
        RunConfig(block="ode", activation="relu")


def test_mix_defaults_and_run_config():
    from jko_plugin.steps.coupling import IdentityInitLULinear
    from jko_plugin.steps.kinds import DEFAULT_COUPLING_MIX
    from jko_plugin.workflows import RunConfig, build_flow

    def first_layers(flow):
        return {type(s.flows[0]).__name__ for s in flow.flows if isinstance(s, JKOStep)}

    assert DEFAULT_COUPLING_MIX == "lu" and RunConfig().coupling_mix == "lu"
    assert isinstance(make_coupling_step(4).flows[0], IdentityInitLULinear)
    assert first_layers(build_flow(RunConfig(block="coupling", num_blocks=2), 4)) == {"IdentityInitLULinear"}
    plain = build_flow(RunConfig(block="coupling", num_blocks=2, coupling_mix="none"), 4)
    assert first_layers(plain) == {"IdentityInitCoupledRQSpline"}
    with pytest.raises(ValueError, match="coupling_mix must be one of"):
        RunConfig(block="coupling", coupling_mix="swap")
    # spline steps: no mixing in 2-D (the recipe measured there), an LU map above
    from jko_plugin.steps.kinds import FINE_SPLINE_MAX_DIM, default_spline_mix

    autoregressive = {"AutoregressiveRQSpline"}
    assert first_layers(make_flow(FINE_SPLINE_MAX_DIM, 2, block="spline", hidden=8)) == autoregressive
    lu = {"IdentityInitLULinear"}
    assert first_layers(make_flow(FINE_SPLINE_MAX_DIM + 1, 2, block="spline", hidden=8)) == lu
    assert default_spline_mix(FINE_SPLINE_MAX_DIM + 1) == "lu"
    assert first_layers(build_flow(RunConfig(num_blocks=2, spline_mix="none"), 5)) == autoregressive
    assert first_layers(build_flow(RunConfig(num_blocks=2, spline_mix="permute"), 2)) == {"Permute"}
    with pytest.raises(ValueError, match="spline_mix must be one of"):
        RunConfig(spline_mix="swap")


def test_ode_run_defaults_give_block_one_three_shares_of_a_budget():
    from jko_plugin.workflows import RunConfig

    ode = RunConfig(block="ode")
    assert ode.density == "auto" and ode.budget_weights == (3.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert RunConfig(num_blocks=2).budget_weights == (1.0, 1.0)  # spline steps: equal shares
    assert RunConfig(block="ode", num_blocks=2, first_share=2).budget_weights == (2.0, 1.0)
    with pytest.raises(ValueError, match="first_share"):
        RunConfig(first_share=0)


def test_ode_rk4_steps_have_one_owner():
    # 3 RK4 steps per block (BENCHMARKS.md s.4.0): a hand-built block, a hand-built scheduler and
    # a run all take DEFAULT_SOLVER_STEPS; kinds without an ODE have none.
    from jko_plugin.sampling.scheduler import JKOScheduler
    from jko_plugin.steps import DEFAULT_SOLVER_STEPS
    from jko_plugin.workflows import RunConfig, build_flow

    assert DEFAULT_SOLVER_STEPS == 3
    assert JKOBlock(2).steps == JKOScheduler().steps_per_block == DEFAULT_SOLVER_STEPS
    assert RunConfig(block="ode").steps == STEP_KINDS["ode"].run_defaults["steps"] == DEFAULT_SOLVER_STEPS
    assert RunConfig().steps is None and "steps" not in RunConfig().step_options()
    flow = build_flow(RunConfig(block="ode", num_blocks=2, hidden=(8,)), 2)
    assert [b.steps for b in flow.flows] == [3, 3]
    assert RunConfig(block="ode", steps=5).scheduler().config.steps_per_block == 5
    with pytest.raises(ValueError, match="steps"):
        RunConfig(block="ode", steps=0)


def test_a_kind_whose_run_defaults_name_no_setting_is_refused(monkeypatch):
    import dataclasses

    from jko_plugin.workflows import RunConfig

    monkeypatch.setitem(
        STEP_KINDS, "bad", dataclasses.replace(STEP_KINDS["ode"], name="bad", run_defaults={"stepz": 3})
    )
    with pytest.raises(
        ValueError, match="step kind 'bad': run_defaults names 'stepz', not a RunConfig field"
    ):
        RunConfig(block="bad")


def test_ode_blocks_train_with_their_measured_learning_rate():
    # lr 1e-2 won at equal time on gmm16 and moons (BENCHMARKS.md s.4.0); spline steps keep 3e-3.
    from jko_plugin.workflows import RunConfig, build_flow, make_trainer

    for config, lr in [
        (RunConfig(block="ode", num_blocks=1, hidden=(8,)), 1e-2),
        (RunConfig(num_blocks=1, spline_hidden=8), 3e-3),
        (RunConfig(block="ode", num_blocks=1, hidden=(8,), lr=5e-4), 5e-4),
    ]:
        # One iteration per block shows the rate the optimizer starts from.
        trainer = make_trainer(config, build_flow(config, 2), 100, iterations=1, progress=False)
        events = []
        trainer.fit(torch.randn(100, 2, generator=torch.Generator().manual_seed(0)), on_step=events.append)
        assert trainer.options.lr == lr and events[0].lr == pytest.approx(lr)


def tail_bounds(step) -> set[float]:
    return {float(m.tail_bound) for m in step.modules() if hasattr(m, "tail_bound")}


def test_step_one_may_take_a_narrower_spline_interval(tmp_path):
    # jko-spline-64's step 1 works on [-3, 3], where the standardised pictures lie; the later
    # steps keep [-5, 5], so that latent draws beyond 3 are still moved when sampling.
    from jko_plugin import jko_steps
    from jko_plugin.sampling.model import JKOFlowModel
    from jko_plugin.workflows import RunConfig, build_flow

    config = RunConfig(num_blocks=3, spline_hidden=8, first_tail_bound=3.0)
    flow = build_flow(config, 2)
    assert [tail_bounds(s) for s in jko_steps(flow)] == [{3.0}, {5.0}, {5.0}]
    # On standardised data spline steps narrow step 1 by default in d <= 2 only; 5 keeps it wide.
    assert [tail_bounds(s) for s in jko_steps(build_flow(RunConfig(num_blocks=2), 2))] == [{3.0}, {5.0}]
    assert [tail_bounds(s) for s in jko_steps(build_flow(RunConfig(num_blocks=2), 3))] == [{5.0}, {5.0}]
    wide = RunConfig(num_blocks=2, first_tail_bound=5.0)
    assert [tail_bounds(s) for s in jko_steps(build_flow(wide, 2))] == [{5.0}, {5.0}]
    coupling = RunConfig(block="coupling", num_blocks=2)
    assert [tail_bounds(s) for s in jko_steps(build_flow(coupling, 2))] == [{5.0}, {5.0}]
    # The default is made for standardised data: raw data, or make_flow alone, keep [-5, 5].
    raw = RunConfig(num_blocks=2, standardize=False)
    assert [tail_bounds(s) for s in jko_steps(build_flow(raw, 2))] == [{5.0}, {5.0}]
    assert [tail_bounds(s) for s in jko_steps(make_flow(2, 2, block="spline"))] == [{5.0}, {5.0}]
    torch.manual_seed(0)
    perturb(flow)
    step1, step2 = jko_steps(flow)[:2]
    outside = torch.tensor([[4.0, -4.5], [3.5, 4.9]])  # beyond 3, within 5
    # Outside its interval a spline with linear tails is the identity: step 1 leaves the points,
    # step 2 moves them.
    z1, ld1 = step1.inverse(outside)
    torch.testing.assert_close(z1, outside, atol=1e-6, rtol=0)
    torch.testing.assert_close(ld1, torch.zeros(2), atol=1e-6, rtol=0)
    assert (step2.inverse(outside)[0] - outside).abs().amax() > 1e-3
    for step in jko_steps(flow):
        check_flow(step, torch.randn(32, 2) * 2, atol=1e-4)
    # Saved and reloaded, each step keeps its own interval and the density is the same.
    model = JKOFlowModel.from_normflows(flow, schedule=config.step_sizes)
    model.save_pretrained(tmp_path)
    loaded = JKOFlowModel.from_pretrained(tmp_path).to_normflows()
    assert [tail_bounds(s) for s in jko_steps(loaded)] == [{3.0}, {5.0}, {5.0}]
    x = torch.randn(16, 2) * 2
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="first_tail_bound is for steps made of splines"):
        RunConfig(block="ode", first_tail_bound=3.0)
    with pytest.raises(ValueError, match="first_tail_bound must be finite and > 0"):
        RunConfig(first_tail_bound=0.0)
    with pytest.raises(ValueError, match="bad options"):
        make_flow(2, 2, block="spline", first={"tail_bnd": 3.0})
