"""Within-step early stopping: each JKO step keeps its best iterate on the validation points."""

import copy
import json

import pytest
import torch

from jko_plugin import JKOTrainer, make_flow
from jko_plugin.training.history import TrainingHistory
from jko_plugin.training.options import TrainerOptions
from jko_plugin.training.step_fit import check_iterations
from jko_plugin.workflows import RunConfig, build_flow, make_trainer

from .flowcheck import moons


def fitter(**kw):
    trainer = JKOTrainer(make_flow(2, 1, block="spline"), [1.0], progress=False, **kw)
    return trainer._fitter()


def spline_step(seed=0):
    torch.manual_seed(seed)
    return make_flow(2, 1, block="spline", layers=1, hidden=16).flows[0]


def test_check_iterations():
    assert check_iterations(100, 4) == [6, 25, 56, 100]  # 100 * (i / 4)^2, denser early
    assert check_iterations(10, 3) == [1, 4, 10]
    assert check_iterations(3, 10) == [1, 2, 3]
    assert check_iterations(100, 0) == []
    assert check_iterations(1, 1) == [1]


def test_validation_loss_is_the_proximal_loss_on_the_points():
    step = spline_step().double()
    f = fitter()
    x = moons(300, 1).double()
    f.train(step, moons(400, 0).double(), 0.7, 1, 30, 1)  # a step that is not the identity
    h = 0.7
    with torch.no_grad():
        out = step.transport(x)  # the training path: T(x) and its log-determinant
        reference = (
            0.5 * out.z.square().sum(-1) - out.log_det + (out.z - x).square().sum(-1) / (2 * h)
        ).mean()
    assert f.validation_loss(step, x, h) == pytest.approx(float(reference), rel=1e-9, abs=1e-9)
    assert float(out.sq_displacement.mean()) > 1e-4


def test_the_kept_iterate_is_the_best_checked_one():
    # With a constant learning rate the first m iterations are the same whatever the total, so the
    # iterate kept after N iterations must equal a run stopped at m, the best of the checked m.
    x, val, h, n, checks = moons(96, 0), moons(200, 1), 0.5, 40, 4

    def run(iterations, step_checks, patience=0):
        step = spline_step()
        f = fitter(
            step_checks=step_checks, step_patience=patience, lr=3e-2, lr_schedule="constant", batch_size=32
        )
        trained, kept = f.train(step, x, h, 1, iterations, 1, val=val)
        return step, trained, kept, f.validation_loss(step, val, h)

    at = check_iterations(n, checks)
    scores = {m: run(m, 0)[3] for m in at}
    scores[0] = fitter().validation_loss(spline_step(), val, h)
    step, trained, kept, score = run(n, checks)
    best = min(scores, key=scores.get)
    assert (trained, kept) == (n, best)
    assert score == pytest.approx(scores[best], rel=1e-12)
    reference = run(best, 0)[0] if best else spline_step()
    for k, v in step.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k
    # With patience p the step stops at the p-th check in a row without a better score.
    for patience in (1, 2):
        stop, best_so_far, worse = n, 0, 0
        for m in at:
            worse = 0 if scores[m] < scores[best_so_far] else worse + 1
            best_so_far = m if scores[m] < scores[best_so_far] else best_so_far
            if worse >= patience:
                stop = m
                break
        step, trained, kept, score = run(n, checks, patience)
        assert (trained, kept) == (stop, best_so_far)
        assert score == pytest.approx(scores[best_so_far], rel=1e-12)


def test_a_step_that_only_gets_worse_on_validation_stays_where_it_started():
    # Training points far from the validation points: every trained iterate scores worse there.
    x = torch.randn(128, 2) * 0.1 + torch.tensor([3.0, -3.0])
    val = torch.randn(200, 2)
    step = spline_step()
    start = {k: v.clone() for k, v in step.state_dict().items()}
    trained, kept = fitter(step_checks=3, lr=1e-2, batch_size=64).train(step, x, 0.5, 1, 30, 1, val=val)
    assert (trained, kept) == (30, 0)
    for k, v in step.state_dict().items():
        assert torch.equal(v, start[k]), k
    # With patience 2 it stops after the second check (30 * (2/3)^2 = 13 iterations), unchanged.
    step = spline_step()
    f = fitter(step_checks=3, step_patience=2, lr=1e-2, batch_size=64)
    assert f.train(step, x, 0.5, 1, 30, 1, val=val) == (13, 0)
    for k, v in step.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_without_checks_or_validation_points_the_last_iterate_is_kept():
    x, val = moons(128, 0), moons(64, 1)
    a, b = spline_step(), spline_step()
    assert fitter(step_checks=0, batch_size=64).train(a, x, 0.5, 1, 12, 1, val=val) == (12, 12)
    assert fitter(step_checks=5, step_patience=1, batch_size=64).train(b, x, 0.5, 1, 12, 1) == (12, 12)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_trainer_records_the_kept_iterate_and_history_round_trips(tmp_path):
    x, x_val = moons(400, 0), moons(200, 1)
    flow = make_flow(2, 2, block="spline", layers=1, hidden=16)
    trainer = JKOTrainer(flow, [0.5, 1.0], iterations=20, batch_size=100, step_checks=4, progress=False)
    history = trainer.fit(x, x_val, checkpoint_dir=tmp_path)
    kept = [b.kept_iteration for b in history.blocks]
    assert all(k in [0, *check_iterations(20, 4)] for k in kept)
    assert TrainingHistory.from_dict(history.to_dict()).blocks == history.blocks
    # A history saved before kept_iteration existed kept every block's last iterate.
    old = history.to_dict()
    for b in old["blocks"]:
        del b["kept_iteration"]
    assert [b.kept_iteration for b in TrainingHistory.from_dict(old).blocks] == [20, 20]
    # ... and a checkpoint written before step_checks existed resumes with its default (0).
    meta = json.loads((tmp_path / "trainer.json").read_text())
    del meta["options"]["step_checks"]
    (tmp_path / "trainer.json").write_text(json.dumps(meta))
    again = JKOTrainer(
        make_flow(2, 2, block="spline", layers=1, hidden=16),
        [0.5, 1.0],
        iterations=20,
        batch_size=100,
        progress=False,
    )
    assert len(again.fit(x, x_val, checkpoint_dir=tmp_path, resume=True).blocks) == 2


def test_keep_best_turns_the_checks_on_and_bad_counts_are_refused():
    config = RunConfig(block="spline", num_blocks=1)
    flow = build_flow(config, 2)
    assert make_trainer(config, flow, 100).options.step_checks == 0
    assert make_trainer(config, flow, 100).options.step_patience == 0
    chosen = RunConfig(block="spline", num_blocks=1, keep_best=True, step_checks=7)
    assert make_trainer(chosen, flow, 100).options.step_checks == 7
    assert make_trainer(chosen, flow, 100).options.step_patience == 0  # opt-in
    patient = RunConfig(block="spline", num_blocks=1, keep_best=True, step_patience=2)
    assert make_trainer(patient, flow, 100).options.step_patience == 2
    unchecked = RunConfig(block="spline", num_blocks=1, keep_best=True, step_checks=0, step_patience=2)
    assert make_trainer(unchecked, flow, 100).options.step_patience == 0
    with pytest.raises(ValueError, match="set step_checks too"):
        TrainerOptions(step_patience=2)
    with pytest.raises(ValueError, match="step_patience"):
        RunConfig(step_patience=-1)
    with pytest.raises(ValueError, match="step_checks"):
        TrainerOptions(step_checks=-1)
    with pytest.raises(ValueError, match="pass a validation split"):
        make_trainer(chosen, flow, 100).fit(moons(100))
    with pytest.raises(ValueError, match="step_checks"):
        RunConfig(step_checks=1.5)


def test_patience_records_the_iterations_trained_and_the_budget_moves_on(tmp_path):
    # Far-off training points: every step stops early with patience; the record says how far it got
    # and a TimeBudget's cost per iteration is measured on those iterations, not the planned ones.
    x = torch.randn(256, 2) * 0.1 + torch.tensor([3.0, -3.0])
    x_val = torch.randn(200, 2)
    flow = make_flow(2, 2, block="spline", layers=1, hidden=16)
    options = dict(iterations=40, batch_size=64, lr=1e-2, step_checks=4, progress=False)
    trainer = JKOTrainer(flow, [0.5, 1.0], step_patience=1, **options)
    history = trainer.fit(x, x_val, checkpoint_dir=tmp_path)
    assert history.blocks[0].iterations < 40
    assert all(b.kept_iteration <= b.iterations for b in history.blocks)
    meta = json.loads((tmp_path / "trainer.json").read_text())
    assert meta["options"]["step_patience"] == 1


def test_an_averaged_step_ends_at_the_moving_average_of_its_iterates():
    # The average does not feed back into training, so the iterates are those of a run without
    # it: the step must end at their EMA computed by hand (at the best check, with checks).
    x, val, h, n, decay = moons(96, 0), moons(200, 1), 0.5, 30, 0.8
    iterates = []
    step = spline_step()
    f = fitter(lr=3e-2, batch_size=32)
    f.train(step, x, h, 1, n, 1, on_step=lambda e: iterates.append(_params(step)))
    averages = [iterates[0]]
    for w in iterates[1:]:
        averages.append([decay * a + (1 - decay) * p for a, p in zip(averages[-1], w)])

    averaged = spline_step()
    assert fitter(lr=3e-2, batch_size=32, ema=decay).train(averaged, x, h, 1, n, 1) == (n, n)
    for got, want in zip(_params(averaged), averages[-1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(averages[-1], iterates[-1])) > 1e-3

    checked = spline_step()
    f = fitter(lr=3e-2, batch_size=32, ema=decay, step_checks=4)
    trained, kept = f.train(checked, x, h, 1, n, 1, val=val)
    want = _params(spline_step()) if kept == 0 else averages[kept - 1]
    for got, w in zip(_params(checked), want):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ema is a decay in \\[0, 1\\)"):
        TrainerOptions(ema=1.0)


def _params(step):
    return [p.detach().clone() for p in step.parameters()]


def test_an_ode_step_whose_checks_chose_on_an_exploited_log_det_chooses_again(monkeypatch):
    # The checks score the 1-step log-det the block trains on; choose_on_scored_density gets every
    # checked iterate and rescores on the ODE's density. Forced here to prefer the start.
    from jko_plugin.training import step_fit

    seen = {}

    def first_candidate(step, best, candidates, score):
        state = {k: v.clone() for k, v in step.state_dict().items()}
        seen.update(best=best, its=[it for _, it in candidates], score=score(step), state=state)
        return (0.0, *candidates[0])

    monkeypatch.setattr(step_fit, "choose_on_scored_density", first_candidate)
    x, val = moons(256, 0), moons(128, 1)
    torch.manual_seed(0)
    block = make_flow(2, 1, block="ode", hidden=(16,), steps=1, density="ode").flows[0]
    start = {k: v.clone() for k, v in block.state_dict().items()}
    f = fitter(step_checks=4, batch_size=64, lr=1e-2)
    assert f.train(block, x, 0.5, 1, 20, 1, val=val) == (20, 0)
    assert seen["its"] == [0, *check_iterations(20, 4)]
    trained = copy.deepcopy(block)
    trained.load_state_dict(seen["state"])
    assert seen["score"] == pytest.approx(f.validation_loss(trained, val, 0.5))  # the ODE's density
    assert seen["score"] != pytest.approx(f.validation_loss(trained, val, 0.5, scored=False))
    for k, v in block.state_dict().items():
        assert torch.equal(v, start[k]), k
    # Exact maps and blocks trained with the scoring solver are not asked.
    seen.clear()
    spline = spline_step()
    f.train(spline, x, 0.5, 1, 20, 1, val=val)
    assert not seen


def test_choose_on_scored_density_keeps_the_winner_within_tolerance():
    from jko_plugin.training.checks import EXPLOIT_TOLERANCE, choose_on_scored_density

    step = torch.nn.Linear(1, 1, bias=False)
    states = [({"weight": torch.tensor([[w]])}, i) for i, w in enumerate([0.5, 2.0])]
    calls = []

    def score(s):
        calls.append(float(s.weight.detach()))
        return float(s.weight.detach()) ** 2

    held = step.weight.detach().clone()
    # 2.0 scored 4.0 by the checks: rescored within the tolerance, it stands after one score.
    assert choose_on_scored_density(step, (4.0 - EXPLOIT_TOLERANCE / 2, *states[1]), states, score)[2] == 1
    assert calls == [2.0]
    # Scored 1.0 by the checks, 4.0 by the scored density: every candidate is rescored.
    assert choose_on_scored_density(step, (1.0, *states[1]), states, score) == (0.25, *states[0])
    assert torch.equal(step.weight, held)  # the step keeps its own weights
