"""Flow surgery: adding, dropping and renewing JKO steps keeps every other layer where it is."""

import normflows as nf
import pytest
import torch

from jko_plugin import JKOBlock, JKOStep, jko_steps, make_flow
from jko_plugin.training.surgery import append_step, drop_steps_after, grow_to, renew_steps


def kinds(flow):
    """The layers data side first: 'S' for a JKO step, 'A' for an ActNorm."""
    return "".join("A" if isinstance(f, nf.flows.ActNorm) else "S" for f in reversed(flow.flows))


def flow_with_actnorm(block="ode"):
    opts = {"hidden": (8,), "steps": 1} if block == "ode" else {"hidden": 8, "layers": 1}
    flow = make_flow(2, 3, block=block, **opts)
    flow.flows.insert(1, nf.flows.ActNorm(2))  # between step 2 and step 3 (data side first)
    return flow


@pytest.mark.parametrize("block", ["ode", "spline"])
def test_append_grow_drop(block):
    flow = flow_with_actnorm(block)
    assert kinds(flow) == "SSAS"
    last = jko_steps(flow)[-1]
    new = append_step(flow, seed=7)
    assert kinds(flow) == "SSASS" and jko_steps(flow)[-1] is new and flow.flows[0] is new
    assert type(new) is type(last) and new.kind == last.kind
    # fresh weights, reproducible from the seed
    again = append_step(
        make_flow(
            2,
            1,
            block=block,
            **({"hidden": (8,), "steps": 1} if block == "ode" else {"hidden": 8, "layers": 1}),
        ),
        seed=7,
    )
    for a, b in zip(new.state_dict().values(), again.state_dict().values()):
        if a.dtype.is_floating_point and a.numel() > 2:
            torch.testing.assert_close(a, b)
    grow_to(flow, 6, seed=0)
    assert kinds(flow) == "SSASSSS"
    drop_steps_after(flow, 2)
    assert kinds(flow) == "SSA"
    assert len(jko_steps(flow)) == 2


def test_renew_replaces_every_step_and_keeps_the_layers():
    flow = flow_with_actnorm()
    old = jko_steps(flow)
    actnorm = flow.flows[1]
    renew_steps(flow, 5, seed=3)
    new = jko_steps(flow)
    assert kinds(flow) == "SSASSS" and flow.flows[3] is actnorm
    assert len(new) == 5 and not any(a is b for a in old for b in new)
    assert all(isinstance(s, JKOBlock) and s.hidden == (8,) for s in new)
    renew_steps(flow, 2, seed=3)
    assert kinds(flow) == "SSA"


def test_a_step_that_cannot_be_rebuilt_is_refused_with_a_clear_error():
    step = JKOStep([nf.flows.Planar((2,))], dim=2)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), [step])
    with pytest.raises(ValueError, match="cannot add or renew JKO steps like this JKOStep.*Planar"):
        append_step(flow, seed=0)


def test_keep_best_steps_cuts_after_the_best_validation_prefix():
    from jko_plugin import JKOTrainer
    from jko_plugin.datasets import two_moons
    from jko_plugin.training.surgery import best_prefix

    assert best_prefix([3.0, 2.5, 2.5, 2.7]) == 2  # the shortest of the best
    with pytest.raises(ValueError, match="held-out NLLs"):
        best_prefix([])
    torch.manual_seed(0)
    flow = make_flow(2, 3, block="ode", hidden=(16,))
    trainer = JKOTrainer(flow, [0.3, 0.5, 0.8], iterations=2, batch_size=64, progress=False)
    with pytest.raises(ValueError, match="held-out NLLs"):
        trainer.keep_best_steps()
    x, x_val = two_moons(256, seed=0, standardize=True), two_moons(128, seed=1, standardize=True)
    history = trainer.fit(x, x_val)
    # The flow cut after each step, scored by hand on x_val, is what the history recorded.
    steps = jko_steps(flow)
    for k in range(1, 4):
        z, log_det = x_val.clone(), torch.zeros(128)
        with torch.no_grad():
            for step in steps[:k]:
                z, ld = step.inverse(z)
                log_det = log_det + ld
        own = float(-(flow.q0.log_prob(z) + log_det).mean())
        assert own == pytest.approx(history.blocks[k - 1].nll, rel=1e-4)
    best = best_prefix([b.nll for b in history.blocks])
    kept = steps[:best]
    assert trainer.keep_best_steps() == best
    assert jko_steps(flow) == kept and trainer.schedule.step_sizes == pytest.approx([0.3, 0.5, 0.8][:best])
    with torch.no_grad():
        cut = float(-flow.log_prob(x_val).mean())
    assert cut == pytest.approx(history.blocks[best - 1].nll, rel=1e-4)


def test_train_flow_keep_best_chooses_on_a_split_of_the_training_points():
    from jko_plugin.datasets import two_moons
    from jko_plugin.datasets.files import validation_split
    from jko_plugin.training.surgery import best_prefix
    from jko_plugin.workflows import RunConfig, train_flow

    x_train, x_test = two_moons(300, seed=0, standardize=True), two_moons(100, seed=1, standardize=True)
    config = RunConfig(block="coupling", num_blocks=3, iterations=3, keep_best=True, batch_size=64)
    run = train_flow(x_train, x_test, config, progress=False)
    nlls = [b.nll for b in run.history.blocks]
    assert len(jko_steps(run.flow)) == best_prefix(nlls) and run.scheduler.num_blocks == best_prefix(nlls)
    # The NLLs it chose on are those of the 30 held-out training rows, not of x_test.
    _, x_val, _, _ = validation_split(x_train, config.seed + 1)
    assert x_val.shape[0] == 30
    with torch.no_grad():
        assert float(-run.flow.log_prob(x_val).mean()) == pytest.approx(nlls[best_prefix(nlls) - 1], rel=1e-4)
