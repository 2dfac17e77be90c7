import json
import math

import normflows as nf
import pytest
import torch

from jko_plugin import CheckpointError, JKOBlock, JKOTrainer, TrainingDiverged, make_flow
from jko_plugin.training.distributed import DistributedContext
from jko_plugin.training.history import TrainingHistory, knn_entropy
from jko_plugin.training.step_fit import StepFitter
from jko_plugin.workflows import ode_density, solver_gap

from .flowcheck import RevisingPlan, moons


def jko_gaussian_step(m, s, h):
    """Exact JKO step of N(m, s^2) towards N(0, 1): mean m/(1+h), std a*s with
    (1+h) a^2 s^2 - a s^2 - h = 0, a > 0."""
    a = (s**2 + math.sqrt(s**4 + 4 * (1 + h) * s**2 * h)) / (2 * (1 + h) * s**2)
    return m / (1 + h), a * s


def small_trainer(flow, hs, **kw):
    opts = dict(iterations=60, batch_size=128, lr=5e-3, progress=False, seed=0)
    opts.update(kw)
    return JKOTrainer(flow, hs, **opts)


def test_closed_form_gaussian_step_reference():
    # The reference itself: the exact step lowers KL + W2^2/(2h) below nearby Gaussians.
    def objective(mu, sd, m, s, h):
        kl = 0.5 * (sd**2 + mu**2 - 1) - math.log(sd)
        return kl + ((mu - m) ** 2 + (sd - s) ** 2) / (2 * h)

    m, s, h = 1.5, 0.4, 0.7
    mu, sd = jko_gaussian_step(m, s, h)
    best = objective(mu, sd, m, s, h)
    for dm in (-1e-2, 1e-2):
        assert objective(mu + dm, sd, m, s, h) > best
        assert objective(mu, sd + dm, m, s, h) > best


@pytest.mark.parametrize("h", [0.3, 1.5])
def test_one_block_reproduces_the_exact_gaussian_jko_step(h):
    torch.manual_seed(0)
    m = torch.tensor([2.0, -1.0])
    s = torch.tensor([0.5, 1.6])
    x = torch.randn(8192, 2) * s + m
    flow = make_flow(2, 1, block="ode", hidden=(32, 32), steps=2)
    small_trainer(flow, [h], iterations=400, batch_size=512, lr=1e-2).fit(x)
    with torch.no_grad():
        z, _ = flow.flows[0].inverse(x)
    for j in range(2):
        mu, sd = jko_gaussian_step(float(x[:, j].mean()), float(x[:, j].std()), h)
        assert float(z[:, j].mean()) == pytest.approx(mu, abs=0.03 * max(1.0, abs(mu)))
        assert float(z[:, j].std()) == pytest.approx(sd, rel=0.03)


def test_moons_kl_decreases_and_movement_shrinks():
    x, x_val = moons(4000, 0), moons(1000, 1)
    flow = make_flow(2, 3, block="ode", hidden=(32, 32), steps=2)
    hist = small_trainer(flow, [0.5, 0.7, 1.0], iterations=150, batch_size=256).fit(x, x_val)
    kl = [b.kl_estimate for b in hist.blocks]
    assert all(b <= a + 1e-3 for a, b in zip(kl, kl[1:])), kl
    assert kl[-1] < kl[0] - 1e-3
    assert hist.blocks[-1].w2_movement < hist.blocks[0].w2_movement
    # The KL estimate is the held-out NLL less the kNN entropy of the data; the NLL is the ODE's
    # own density (as it is scored), not the 2-step log-det the blocks were trained on.
    with torch.no_grad(), ode_density(flow):
        nll = -flow.log_prob(x_val).mean()
    assert hist.blocks[-1].nll == pytest.approx(float(nll), rel=1e-4)
    assert hist.blocks[-1].kl_estimate == pytest.approx(float(nll) - knn_entropy(x_val), rel=1e-4)
    for b in hist.blocks:
        assert b.loss == pytest.approx(b.potential + b.neg_log_det + b.transport)
        assert b.inversion_error < 1e-2 and b.seconds > 0
    d = json.loads(json.dumps(hist.to_dict()))
    assert TrainingHistory.from_dict(d).to_dict() == d
    assert "W2 move" in hist.summary()


def test_steps_are_kept_on_the_density_they_are_scored_with():
    # One RK4 step per block in training: a log-det far from the ODE's, so the records (and
    # keep_best_steps) must come from the ODE density, prefix by prefix.
    x, x_val = moons(2000, 0), moons(500, 1)
    flow = make_flow(2, 2, block="ode", hidden=(32, 32), steps=1, density="ode")
    hist = small_trainer(flow, [0.5, 1.0], iterations=150, batch_size=256, lr=1e-2).fit(x, x_val)
    assert abs(solver_gap(flow, x_val)) > 1e-3  # the two densities differ here
    with torch.no_grad(), ode_density(flow):
        z1, ld1 = flow.flows[1].inverse(x_val)
        first = -(flow.q0.log_prob(z1) + ld1).mean()
        both = -flow.log_prob(x_val).mean()
    assert [b.nll for b in hist.blocks] == pytest.approx([float(first), float(both)], rel=1e-4)
    # The within-step checks score the ODE density as well: the proximal loss of step 1 on x_val.
    loss = 0.5 * z1.square().sum(-1) - ld1 + (z1 - x_val).square().sum(-1) / (2 * 0.5)
    fitter = StepFitter(small_trainer(flow, [0.5, 1.0]).options, DistributedContext())
    assert fitter.validation_loss(flow.flows[1], x_val, 0.5) == pytest.approx(float(loss.mean()), rel=1e-5)
    assert flow.flows[0].steps == 1  # trained steps given back


def test_block_diagnostics_match_a_direct_evaluation():
    # The data are pushed without divergences; -log|det| comes from eval_size of the points.
    x = moons(600, 0)
    flow = make_flow(2, 1, block="ode", hidden=(16, 16), steps=2)
    (rec,) = small_trainer(flow, [0.5], iterations=20, batch_size=64, eval_size=100).fit(x).blocks
    block = flow.flows[0]
    with torch.no_grad():
        full = block.transport(x)
        cheap = block.transport(x, log_det=False)
    assert cheap.log_det is None
    for name in ("z", "sq_displacement", "kinetic_energy"):
        torch.testing.assert_close(getattr(cheap, name), getattr(full, name))
    assert rec.potential == pytest.approx(float(0.5 * full.z.square().sum(-1).mean()), rel=1e-5)
    assert rec.transport == pytest.approx(float(full.sq_displacement.mean() / (2 * 0.5)), rel=1e-5)
    assert rec.neg_log_det == pytest.approx(float(-full.log_det[:100].mean()), rel=1e-5)
    assert rec.w2_movement == pytest.approx(float(full.sq_displacement.mean().sqrt()), rel=1e-5)


def test_spline_steps_beat_a_gaussian_fit():
    x, x_val = moons(3000, 0), moons(1000, 1)
    flow = make_flow(2, 2, block="spline", hidden=32)
    hist = small_trainer(flow, [0.5, 1.0], iterations=200, batch_size=256).fit(x, x_val)
    gauss_nll = 0.5 * torch.logdet(2 * math.pi * math.e * torch.cov(x_val.T))
    assert hist.blocks[-1].nll < float(gauss_nll) - 0.2
    with torch.no_grad():
        assert hist.blocks[-1].nll == pytest.approx(float(-flow.log_prob(x_val).mean()), rel=1e-4)


def test_kinetic_cost_and_other_layers_untouched():
    x = moons(1000)
    act = nf.flows.ActNorm(2)
    flows = [JKOBlock(2, hidden=(16,), steps=2), act, JKOBlock(2, hidden=(16,), steps=2)]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)
    hist = small_trainer(flow, [0.5, 1.0], transport_cost="kinetic").fit(x)
    assert len(hist.blocks) == 2
    # ActNorm was initialised on the pushed data but not trained: exactly its data-dependent init.
    assert bool(act.data_dep_init_done)
    # Block 1 (data side, flows[-1]) sits on [0, h1], block 2 on [h1, h1 + h2].
    assert flows[2].interval.tolist() == [0.0, 0.5] and flows[0].interval.tolist() == [0.5, 1.5]


def test_same_seed_same_model():
    x = moons(800)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
        small_trainer(flow, [0.5, 1.0], iterations=20, seed=3).fit(x)
        states.append(flow.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_max_blocks_appends_until_the_rule_holds():
    x = moons(800)
    flow = make_flow(2, 1, block="ode", hidden=(16,), steps=1)
    trainer = small_trainer(flow, [0.5], iterations=10, tol=1e-12, max_blocks=3, growth=2.0)
    hist = trainer.fit(x)
    assert len(hist.blocks) == 3 and len(flow.flows) == 3
    assert [b.step_size for b in hist.blocks] == [0.5, 1.0, 2.0]
    assert not hist.converged
    flow = make_flow(2, 1, block="ode", hidden=(16,), steps=1)
    hist = small_trainer(flow, [0.5], iterations=10, tol=1e6, max_blocks=3).fit(x)
    assert len(hist.blocks) == 1 and hist.converged


def test_stop_early_drops_untrained_steps():
    flow = make_flow(2, 3, block="ode", hidden=(16,), steps=1)
    hist = small_trainer(flow, [0.5, 1, 2], iterations=10, tol=1e6, stop_early=True).fit(moons(500))
    assert len(hist.blocks) == 1 and len(flow.flows) == 1


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    x = moons(800)

    def run(ckpt, **kw):
        torch.manual_seed(0)
        flow = make_flow(2, 3, block="ode", hidden=(16,), steps=1)
        trainer = small_trainer(flow, [0.5, 0.7, 1.0], iterations=30, warm_start=True)
        return flow, trainer, trainer.fit(x, checkpoint_dir=ckpt, **kw) if "go" not in kw else None

    full, _, _ = run(tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_two(record):
        if record.index == 2:
            raise Stop

    torch.manual_seed(0)
    flow = make_flow(2, 3, block="ode", hidden=(16,), steps=1)
    with pytest.raises(Stop):
        small_trainer(flow, [0.5, 0.7, 1.0], iterations=30, warm_start=True).fit(
            x, checkpoint_dir=tmp_path / "cut", callback=stop_after_two
        )
    meta = json.loads((tmp_path / "cut" / "trainer.json").read_text())
    assert meta["blocks_trained"] == 2
    saved = {k: v.clone() for k, v in flow.state_dict().items()}

    torch.manual_seed(123)  # a different fresh model: everything must come from the checkpoint
    fresh = make_flow(2, 3, block="ode", hidden=(16,), steps=1)
    hist = small_trainer(fresh, [0.5, 0.7, 1.0], iterations=30, warm_start=True).fit(
        x, checkpoint_dir=tmp_path / "cut", resume=True
    )
    assert [b.index for b in hist.blocks] == [1, 2, 3]
    for k, v in fresh.state_dict().items():
        if k.startswith(("flows.1.", "flows.2.")):  # blocks 1 and 2 (data side)
            assert torch.equal(v, saved[k]), k
        assert torch.equal(v, full.state_dict()[k]), k


def test_killed_mid_block_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    x = moons(600)
    flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    trainer = small_trainer(flow, [0.5, 1.0], iterations=20)
    original = StepFitter.train

    def dies_in_block_two(self, step, data, h, k, iterations, num_blocks, *more, **kw):
        if k == 2:
            raise KeyboardInterrupt
        return original(self, step, data, h, k, iterations, num_blocks, *more, **kw)

    monkeypatch.setattr(StepFitter, "train", dies_in_block_two)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, checkpoint_dir=tmp_path)
    monkeypatch.setattr(StepFitter, "train", original)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["trainer.json", "weights-001.safetensors"]
    torch.manual_seed(5)
    again = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    hist = small_trainer(again, [0.5, 1.0], iterations=20).fit(x, checkpoint_dir=tmp_path, resume=True)
    assert len(hist.blocks) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer.json", "weights-002.safetensors"]


def test_resume_refuses_the_same_weights_on_another_spline_interval(tmp_path):
    # The interval is a setting, not a weight: step 1 of a 2-D spline flow on [-3, 3] (RunConfig's
    # default on standardised data) and on [-5, 5] have the same parameter shapes but are
    # different maps.
    import json

    x = moons(600)
    narrow = make_flow(2, 2, block="spline", hidden=8, first={"tail_bound": 3.0})
    small_trainer(narrow, [0.5, 1.0], iterations=5).fit(x, checkpoint_dir=tmp_path)
    wide = make_flow(2, 2, block="spline", hidden=8)
    with pytest.raises(CheckpointError, match=r"another model \(spline intervals differ\)"):
        small_trainer(wide, [0.5, 1.0], iterations=5).fit(x, checkpoint_dir=tmp_path, resume=True)
    # A checkpoint written before the intervals were fingerprinted is compared on what it has.
    state = json.loads((tmp_path / "trainer.json").read_text())
    assert state["fingerprint"]["tail_bounds"] == [5.0, 5.0, 3.0, 3.0]  # normflows order: step 1 last
    del state["fingerprint"]["tail_bounds"]
    (tmp_path / "trainer.json").write_text(json.dumps(state))
    hist = small_trainer(wide, [0.5, 1.0], iterations=5).fit(x, checkpoint_dir=tmp_path, resume=True)
    assert len(hist.blocks) == 2


def test_resume_refuses_the_same_weights_through_another_activation(tmp_path):
    # RunConfig's ODE blocks moved from tanh to SiLU: a tanh run resumed under the new default has
    # the same parameter shapes, and would be another map.
    x = moons(600)
    tanh = make_flow(2, 1, block="ode", hidden=(16,), steps=1, activation="tanh")
    small_trainer(tanh, [0.5], iterations=5).fit(x, checkpoint_dir=tmp_path)
    silu = make_flow(2, 1, block="ode", hidden=(16,), steps=1, activation="silu")
    with pytest.raises(CheckpointError, match=r"another model \(activations differ\)"):
        small_trainer(silu, [0.5], iterations=5).fit(x, checkpoint_dir=tmp_path, resume=True)
    again = make_flow(2, 1, block="ode", hidden=(16,), steps=1, activation="tanh")
    hist = small_trainer(again, [0.5], iterations=5).fit(x, checkpoint_dir=tmp_path, resume=True)
    assert len(hist.blocks) == 1


def test_checkpoint_is_not_overwritten_by_a_fresh_or_foreign_run(tmp_path):
    x = moons(600)
    small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
        x, checkpoint_dir=tmp_path
    )
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="resume=True"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
            x, checkpoint_dir=tmp_path
        )
    with pytest.raises(CheckpointError, match="another model \\(parameter shapes differ\\)"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(8,), steps=1), [0.5], iterations=5).fit(
            x, checkpoint_dir=tmp_path, resume=True
        )
    with pytest.raises(CheckpointError, match="trainer options"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=7).fit(
            x, checkpoint_dir=tmp_path, resume=True
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_corrupt_or_missing_checkpoint_files_are_named(tmp_path):
    x = moons(600)
    small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
        x, checkpoint_dir=tmp_path
    )
    weights = tmp_path / "weights-001.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="weights-001.safetensors"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
            x, checkpoint_dir=tmp_path, resume=True
        )
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
            x, checkpoint_dir=tmp_path, resume=True
        )
    (tmp_path / "trainer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="trainer.json"):
        small_trainer(make_flow(2, 1, block="ode", hidden=(16,), steps=1), [0.5], iterations=5).fit(
            x, checkpoint_dir=tmp_path, resume=True
        )


def test_divergence_is_reported_and_checkpoint_kept(tmp_path):
    x = moons(600)
    flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    trainer = small_trainer(flow, [0.5, 1.0], iterations=5)
    original = StepFitter.loss_terms

    def nan_in_block_two(self, step, out, h):
        terms = original(self, step, out, h)
        return (terms[0] * float("nan"), *terms[1:]) if step is flow.flows[0] and step.training else terms

    StepFitter.loss_terms = nan_in_block_two
    try:
        with pytest.raises(TrainingDiverged, match="block 2 diverged"):
            trainer.fit(x, checkpoint_dir=tmp_path)
    finally:
        StepFitter.loss_terms = original
    assert json.loads((tmp_path / "trainer.json").read_text())["blocks_trained"] == 1


@pytest.mark.parametrize(
    "data, kw, err, match",
    [
        (
            torch.tensor([[0.0, float("nan")], [1.0, 2.0], [float("inf"), 0.0]] * 100),
            {},
            ValueError,
            "NaN or inf in 200 of 300 rows",
        ),
        (torch.randn(100, 2), {"batch_size": 128}, ValueError, "fewer than batch_size=128"),
        (torch.randn(300, 3), {}, ValueError, "dimension 3, the model's is 2"),
        (torch.randn(300), {}, ValueError, "2-D"),
        (torch.zeros(0, 2), {}, ValueError, "empty"),
    ],
)
def test_bad_data(data, kw, err, match):
    with pytest.raises(err, match=match):
        small_trainer(make_flow(2, 1, block="ode", hidden=(8,), steps=1), [0.5], **kw).fit(data)


def test_bad_schedule_and_options():
    flow = make_flow(2, 2, block="ode", hidden=(8,), steps=1)
    with pytest.raises(ValueError, match="step_sizes\\[1\\] must be finite and > 0, got 0.0"):
        JKOTrainer(flow, [0.5, 0.0])
    with pytest.raises(ValueError, match="step_sizes\\[1\\] must be finite and > 0, got -1.0"):
        JKOTrainer(flow, [0.5, -1.0])
    with pytest.raises(ValueError, match="2 JKO steps"):
        JKOTrainer(flow, [0.5])
    with pytest.raises(TypeError, match="unknown JKOTrainer options"):
        JKOTrainer(flow, [0.5, 1.0], iters=3)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        JKOTrainer(flow, [0.5, 1.0], optimizer="lbfgs")
    with pytest.raises(ValueError, match="iterations"):
        JKOTrainer(flow, [0.5, 1.0], iterations=0)
    with pytest.raises(ValueError, match="no JKO step"):
        JKOTrainer(nf.NormalizingFlow(nf.distributions.DiagGaussian(2), [nf.flows.ActNorm(2)]), [0.5])


def test_list_of_blocks_is_accepted():
    blocks = [JKOBlock(2, hidden=(8,), steps=1) for _ in range(2)]
    trainer = small_trainer(blocks, [0.5, 1.0], iterations=5)
    trainer.fit(moons(300))
    assert list(trainer.flow.flows) == blocks


def test_knn_entropy_of_a_gaussian():
    x = torch.randn(4000, 3, dtype=torch.float64) * 2.0
    exact = 1.5 * math.log(2 * math.pi * math.e * 4.0)
    assert knn_entropy(x) == pytest.approx(exact, abs=0.05)


def test_adapt_reparametrize_and_refine():
    from jko_plugin import JKOScheduler

    x = moons(800)
    flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    trainer = small_trainer(
        flow, JKOScheduler(step_sizes=[0.2, 2.0]), iterations=20, adapt=("reparametrize",)
    )
    first = {}

    def keep(record):
        first.setdefault(record.index, record.w2_movement)

    hist = trainer.fit(x, callback=keep)
    expected = JKOScheduler(step_sizes=[0.2, 2.0]).reparametrize([first[1], first[2]]).step_sizes
    assert trainer.step_sizes == pytest.approx(list(expected))
    assert sum(trainer.step_sizes) == pytest.approx(2.2)
    assert [b.step_size for b in hist.blocks] == pytest.approx(list(expected))
    flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    trainer = small_trainer(flow, [0.5, 1.0], iterations=5, adapt="refine")
    hist = trainer.fit(x)
    assert trainer.step_sizes == [0.25, 0.25, 0.5, 0.5] and len(flow.flows) == 4 and len(hist.blocks) == 4
    with pytest.raises(ValueError, match="adapt must be one of"):
        small_trainer(make_flow(2, 1), [0.5], adapt=("stretch",))
    with pytest.raises(ValueError, match="JKOBlocks"):
        small_trainer(make_flow(2, 1, block="spline"), [0.5], adapt="refine").fit(x)


# -- iteration plans: how many iterations each block gets ----------------------------------------
def test_fit_follows_an_iteration_plan():
    class Growing:
        def iterations(self, block, history):
            assert len(history.blocks) == block - 1  # the records of the blocks trained so far
            return 3 * block

    flow = make_flow(2, 2, block="ode", hidden=(8,), steps=1)
    history = small_trainer(flow, [0.5, 1.0]).fit(moons(300), plan=Growing())
    assert [b.iterations for b in history.blocks] == [3, 6]


def test_a_plan_revises_each_block_after_its_probe_and_checks_and_cosine_follow():
    from jko_plugin.training.step_fit import check_iterations, probe_iterations

    flow = make_flow(2, 2, block="spline", layers=1, hidden=8)
    lrs = []
    plan = RevisingPlan(40, 100)  # asks for 100 iterations once the probe has run
    x = moons(400)
    trainer = small_trainer(flow, [0.5, 1.0], step_checks=5)
    history = trainer.fit(x[:300], x[300:], plan=plan, on_step=lambda e: lrs.append((e.block, e.lr)))
    assert [b.iterations for b in history.blocks] == [100, 100]
    assert [done for done, _ in plan.asked] == [probe_iterations(40)] * 2 == [20, 20]
    assert all(seconds > 0 for _, seconds in plan.asked)
    # Kept iterates come from the checks of the revised length (or the start, 0).
    assert {b.kept_iteration for b in history.blocks} <= {0, *check_iterations(100, 5)}
    # After the probe the rate follows the cosine over 100 iterations (lr at the start of each).
    first = [lr for block, lr in lrs if block == 1]
    expected = [5e-3 * (1 + math.cos(math.pi * t / 100)) / 2 for t in range(20, 100)]
    assert first[20:] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert first[:20] == pytest.approx([5e-3 * (1 + math.cos(math.pi * t / 40)) / 2 for t in range(20)])


def test_time_budget_revision_fills_the_share_an_inflated_estimate_left_empty():
    import time

    from jko_plugin.training import IterationCosts, TimeBudget

    # An estimate of 0.5 s per iteration (the real cost is a few ms) plans 1-2 iterations per
    # block; the probe measures the real rate and the block fills its share instead.
    flow = make_flow(2, 2, block="spline", layers=1, hidden=8)
    plan = TimeBudget(2.0, IterationCosts(0.5, 0.0, 0.0), 2, start=time.perf_counter())
    history = small_trainer(flow, [0.5, 1.0]).fit(moons(300), plan=plan)
    assert all(b.iterations > 20 for b in history.blocks), [b.iterations for b in history.blocks]
    assert sum(b.seconds for b in history.blocks) < 6.0
    with pytest.raises(RuntimeError, match="no block is planned"):
        TimeBudget(2.0, IterationCosts(0.5, 0.0, 0.0), 2).revise(5, 0.1)


def test_time_budget_shares_the_time_left():
    import time

    from jko_plugin.training import IterationCosts, TimeBudget
    from jko_plugin.training.history import BlockRecord

    costs = IterationCosts(per_iteration=0.01, per_block=0.5, per_fit=1.0)
    plan = TimeBudget(10.0, costs, 4, start=time.perf_counter() - 1.0)
    # 10 s less 1 s spent and 1 s of fit overhead, over 4 blocks: 2 s each, 1.5 s of iterations
    assert 145 <= plan.iterations(1, TrainingHistory()) <= 150
    done = TrainingHistory()
    fields = dict(
        step_size=0.5, potential=0, neg_log_det=0, transport=0, loss=0, w2_movement=1, movement_ratio=1
    )
    fields.update(kl_estimate=0, nll=0, inversion_error=0)
    done.blocks = [BlockRecord(index=1, seconds=2.5, iterations=100, **fields)]
    assert plan.seconds_per_iteration(done) == pytest.approx(0.02)  # re-measured: (2.5 - 0.5) / 100
    # the plan counts the blocks it planned: the second call shares among the 3 blocks left
    assert 1 <= plan.iterations(2, done) <= (8.0 / 3 - 0.5) / 0.02
    # a block quicker than the estimated fixed cost: half its time counts as iterations (0.3 s
    # over 5: 0.03 s each), not 1e-6 s (which planned millions of iterations for the next block)
    done.blocks = [BlockRecord(index=1, seconds=0.3, iterations=5, **fields)]
    assert plan.seconds_per_iteration(done) == pytest.approx(0.03)
    assert plan.iterations(3, done) <= 10.0 / 0.03
    with pytest.raises(ValueError, match="seconds must be finite and > 0"):
        TimeBudget(0.0, costs, 4)


def test_estimate_costs_times_a_copy_and_leaves_the_flow_alone():
    flow = make_flow(2, 2, block="ode", hidden=(8,), steps=1)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    costs = small_trainer(flow, [0.5, 1.0]).estimate_costs(moons(300))
    assert costs.per_iteration > 0 and costs.per_block > 0 and costs.per_fit > 0
    for k, v in flow.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_time_budget_weights_front_load_the_first_block():
    import time

    from jko_plugin.training import IterationCosts, TimeBudget

    costs = IterationCosts(per_iteration=0.01, per_block=0.0, per_fit=0.0)
    plan = TimeBudget(6.0, costs, 4, start=time.perf_counter(), weights=(3, 1, 1, 1))
    assert 295 <= plan.iterations(1, TrainingHistory()) <= 300  # 3 of 6 shares of 6 s
    with pytest.raises(ValueError, match="one number per block"):
        TimeBudget(6.0, costs, 4, weights=(1, 1))
