"""Flow maps: the model's identity on the diagonal, its scheduler and pipeline, distillation against
exact flow maps, JKO teachers on their own time axis, save/load offline, the ``distill`` command."""

import json
import os
import subprocess
import sys
import textwrap

import normflows as nf
import numpy as np
import pytest
import torch
from jko_plugin.adapters.flow_matching import FlowMatchingModel

from jko_plugin import JKOBlock, JKOScheduler
from jko_plugin.cli import main
from jko_plugin.distill import TeacherPool, distill_flow_map, load_teacher, save_flow_map, teacher_gap
from jko_plugin.sampling import FlowMapModel, FlowMapScheduler, FlowMapSchedulerOutput, VelocityField
from jko_plugin.sampling.pipeline import JKOFlowPipeline

from .flowcheck import perturb

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)  # a contracting spiral


def linear_field(total_time=1.0):
    return VelocityField([(0.0, total_time, lambda x, t: x @ A.T)], dim=2)


def expm_map(x, s, t):
    """The exact flow map of dx/dt = A x: X(x, s, t) = expm((t - s) A) x."""
    return x @ torch.linalg.matrix_exp((t - s) * A).T


def random_map(dim=2, total_time=1.0):
    torch.manual_seed(0)
    model = FlowMapModel(dim, hidden=(16, 16), total_time=total_time).double()
    perturb(model, 0.8)
    return model


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def linear_map():
    """The flow map of dx/dt = A x distilled for 800 steps (about 3 s)."""
    torch.manual_seed(0)
    model = FlowMapModel(2, hidden=(32, 32)).double()
    model, history = distill_flow_map(linear_field(), model, steps=800, batch_size=256, pool_size=2048)
    return model, history


def test_identity_on_the_diagonal_exactly():
    model = random_map()
    x = torch.randn(50, 2, dtype=torch.float64)
    for s in (0.0, 0.37, 1.0):
        assert torch.equal(model.flow_map(x, s, s), x)
    s = torch.rand(50, dtype=torch.float64)
    assert torch.equal(model.flow_map(x, s, s.clone()), x)
    # forward returns the secant velocity (X - x) / (t - s)
    u = model(x, torch.tensor([0.8, 0.3], dtype=torch.float64)).sample
    torch.testing.assert_close(model.flow_map(x, 0.8, 0.3), x + (0.3 - 0.8) * u, rtol=1e-15, atol=1e-15)


def test_the_jvp_is_the_autograd_derivative():
    model = random_map()
    x, s, t = (
        torch.randn(6, 2, dtype=torch.float64),
        torch.rand(6, dtype=torch.float64),
        torch.rand(6, dtype=torch.float64),
    )
    dx, ds, dt = (
        torch.randn(6, 2, dtype=torch.float64),
        torch.randn(6, dtype=torch.float64),
        torch.randn(6, dtype=torch.float64),
    )
    X, dX = model.flow_map_jvp(x, s, t, dx, ds, dt)
    ref_X, ref_dX = torch.autograd.functional.jvp(model.flow_map, (x, s, t), (dx, ds, dt))
    torch.testing.assert_close(X, ref_X, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dX, ref_dX, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_pipeline_with_k_steps_is_k_applications_of_the_map(k):
    model = random_map(total_time=2.5)
    pipe = quiet(JKOFlowPipeline(model=model, scheduler=FlowMapScheduler(total_time=2.5)))
    z = torch.randn(9, 2, dtype=torch.float64)
    x = z
    for i in range(k):
        x = model.flow_map(x, 2.5 * (k - i) / k, 2.5 * (k - i - 1) / k)
    assert torch.equal(pipe(latents=z, num_inference_steps=k).samples, x)
    assert torch.equal(model.sample(9, steps=k, latents=z), x)
    # a custom grid through the scheduler
    grid = [2.5, 2.0, 0.4, 0.0]
    pipe.scheduler.set_timesteps(times=grid)
    x = z
    for s, t in zip(grid[:-1], grid[1:]):
        x = pipe.scheduler.step(model(x, (s, t)).sample, (s, t), x).prev_sample
    torch.testing.assert_close(x, model.sample(9, times=grid, latents=z), rtol=0, atol=0)


def test_scheduler_contract(tmp_path):
    scheduler = FlowMapScheduler(total_time=3.0, num_inference_steps=3)
    assert scheduler.timesteps.shape == (3, 2) and scheduler.timesteps.dtype == torch.float64
    torch.testing.assert_close(scheduler.timesteps[:, 0], torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    scheduler.save_pretrained(tmp_path)
    loaded = FlowMapScheduler.from_pretrained(tmp_path)
    assert loaded.config.total_time == 3.0 and loaded.config.num_inference_steps == 3
    assert torch.equal(loaded.timesteps, scheduler.timesteps)
    sample, out = torch.rand(4, 3), torch.rand(4, 3)
    a = scheduler.step(out, scheduler.timesteps[0], sample)
    (b,) = scheduler.step(out, scheduler.timesteps[0], sample, return_dict=False)
    c = scheduler.step(out, scheduler.timesteps[0], sample, generator=torch.Generator())
    assert (
        isinstance(a, FlowMapSchedulerOutput)
        and torch.equal(a.prev_sample, b)
        and torch.equal(b, c.prev_sample)
    )
    torch.testing.assert_close(b, sample - out)


def test_distilled_linear_ode_is_the_matrix_exponential(linear_map):
    """Stated tolerance: mean error within 3% of the mean |X| for the full jump, 1.5% for shorter ones
    (measured 1.3% and 0.4-0.5%), on N(0, I) points; the trained loss must have fallen 10x."""
    model, history = linear_map
    losses = [loss for _, loss in history.losses]
    assert losses[-1] < losses[0] / 10
    x = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for s, t, tol in ((1.0, 0.0, 0.03), (1.0, 0.5, 0.015), (0.6, 0.1, 0.015)):
            ref = expm_map(x, s, t)
            err = (model.flow_map(x, s, t) - ref).norm(dim=1).mean() / ref.norm(dim=1).mean()
            assert err < tol, (s, t, float(err))


def test_composition_on_the_trained_toy(linear_map):
    """X(X(x, s, u), u, t) ~ X(x, s, t): within 5% of the mean |x| (measured 2%)."""
    model, _ = linear_map
    x = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for s, u, t in ((1.0, 0.5, 0.0), (1.0, 0.25, 0.0), (0.9, 0.6, 0.2)):
            two = model.flow_map(model.flow_map(x, s, u), u, t)
            err = (two - model.flow_map(x, s, t)).norm(dim=1).mean() / x.norm(dim=1).mean()
            assert err < 0.05, (s, u, t, float(err))


def test_lagrangian_loss_trains_too():
    torch.manual_seed(0)
    model, history = distill_flow_map(
        linear_field(), FlowMapModel(2, hidden=(16,)).double(), steps=150, loss="lagrangian", pool_size=512
    )
    losses = [loss for _, loss in history.losses]
    assert losses[-1] < losses[0] / 3


def jko_flow(steps=4):
    """Two ODE blocks on [0, 0.3] and [0.3, 0.8] with random weights (normflows order)."""
    torch.manual_seed(0)
    flows = [
        JKOBlock(2, (16,), steps=steps, interval=(0.3, 0.8)),
        JKOBlock(2, (16,), steps=steps, interval=(0.0, 0.3)),
    ]
    for f in flows:
        perturb(f, 0.8)
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows).double()


def test_a_jko_flow_is_a_piecewise_field_on_its_own_time_axis():
    flow = jko_flow(steps=64)
    field = VelocityField.from_model(flow)
    assert field.boundaries == pytest.approx((0.0, 0.3, 0.8)) and field.total_time == pytest.approx(0.8)
    z = torch.randn(32, 2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            field.transport(z, 0.8, 0.0, steps=256), flow.forward(z), atol=1e-9, rtol=0
        )
    # per-row times reach each row's block; the model's forward gives the same velocities
    model = JKOFlowPipeline.from_normflows(flow).model
    t = torch.tensor([0.1, 0.3, 0.31, 0.8], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    expected = torch.cat([model(x[i : i + 1], float(t[i])).sample for i in range(4)])
    torch.testing.assert_close(field(x, t), expected, rtol=1e-12, atol=1e-12)
    # the pool draws states of the teacher's own paths at any time s
    gen = torch.Generator().manual_seed(0)
    pool = TeacherPool(field, 64, intervals=16, generator=gen, dtype=torch.float64)
    assert 0.3 in pool.times
    xs, s = pool.draw(20, gen)
    with torch.no_grad():
        back = torch.stack(
            [field.transport(xs[i : i + 1], float(s[i]), 0.8, steps=256)[0] for i in range(20)]
        )
    assert float(torch.cdist(back, pool.states[0]).min(1).values.max()) < 1e-5


def test_distill_a_jko_teacher_and_sample_it_in_few_steps():
    flow = jko_flow()
    model, history = distill_flow_map(flow, steps=30, hidden=(16,), pool_size=256)
    assert model.total_time == pytest.approx(0.8) and history.steps == 30
    assert all(p.requires_grad for p in flow.parameters())  # the teacher is unfrozen afterwards
    gaps = teacher_gap(model, flow, (1, 4), n=200)
    assert set(gaps) == {1, 4} and all(np.isfinite(v) for v in gaps.values())


SAMPLE_OFFLINE = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from jko_plugin.sampling.pipeline import JKOFlowPipeline
    pipe = JKOFlowPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    z = torch.from_numpy(np.load(sys.argv[2]))
    one = pipe(latents=z, num_inference_steps=1).samples.numpy()
    np.save(sys.argv[3], np.stack([pipe(latents=z).samples.numpy(), one]))
    """
)


def test_save_load_round_trip_in_a_fresh_offline_process(tmp_path):
    model = random_map(total_time=1.7)
    save_flow_map(model, tmp_path / "pipe", num_inference_steps=3)
    z = torch.randn(8, 2, dtype=torch.float64)
    np.save(tmp_path / "z.npy", z.numpy())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "pipe"), str(tmp_path / "z.npy"), str(tmp_path / "o.npy")]
    run = subprocess.run(
        [sys.executable, "-c", SAMPLE_OFFLINE, *args], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    got = np.load(tmp_path / "o.npy", allow_pickle=False)
    expected = np.stack(
        [model.sample(8, steps=3, latents=z).numpy(), model.sample(8, steps=1, latents=z).numpy()]
    )
    np.testing.assert_array_equal(got, expected)
    loaded = FlowMapModel.from_pretrained(tmp_path / "pipe" / "model", low_cpu_mem_usage=False)
    assert loaded.config.total_time == 1.7 and list(loaded.config.hidden) == [16, 16]


def test_cli_distill_on_tiny_models(tmp_path, capsys):
    torch.manual_seed(0)
    fm = FlowMatchingModel(2, hidden=(8,))
    fm.save_pretrained(tmp_path / "fm")
    quiet(JKOFlowPipeline.from_normflows(jko_flow())).save_pretrained(tmp_path / "jko")
    for name in ("fm", "jko"):
        out = tmp_path / f"{name}_map"
        args = [
            "distill",
            "--model",
            str(tmp_path / name),
            "--out",
            str(out),
            "--steps",
            "1,2",
            "--iterations",
            "5",
        ]
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["train_steps"] == 5 and set(report["rms_to_teacher"]) == {"1", "2"}
        assert json.loads((out / "distill.json").read_text()) == report
        pipe = JKOFlowPipeline.from_pretrained(out)
        assert isinstance(pipe.model, FlowMapModel) and pipe.scheduler.config.num_inference_steps == 2
        assert pipe.model.total_time == pytest.approx(1.0 if name == "fm" else 0.8)
        assert load_teacher(tmp_path / name).dim == 2
    assert (
        main(["sample", "--model", str(tmp_path / "fm_map"), "-n", "7", "--out", str(tmp_path / "s.npy")])
        == 0
    )
    assert np.load(tmp_path / "s.npy").shape == (7, 2)
    capsys.readouterr()
    assert (
        main(["distill", "--model", str(tmp_path / "fm"), "--out", str(tmp_path / "o"), "--steps", "0,2"])
        == 2
    )
    assert "error: steps entry must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["distill", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "holds no saved model" in capsys.readouterr().err


def test_bad_inputs():
    model = random_map()
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"timestep must be a pair \(s, t\) or one pair per row, got shape \(3,\)"
    ):
        model(x, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="times must decrease strictly from 1.0 to 0"):
        FlowMapScheduler().set_timesteps(times=[1.0, 0.4, 0.6, 0.0])
    with pytest.raises(ValueError, match="give exactly one of steps and times"):
        FlowMapScheduler().set_timesteps(2, times=[1.0, 0.0])
    with pytest.raises(ValueError, match="total_time must be finite and > 0"):
        FlowMapScheduler(total_time=0.0)
    with pytest.raises(ValueError, match="a FlowMapModel needs a FlowMapScheduler, got JKOScheduler"):
        JKOFlowPipeline(model=model, scheduler=JKOScheduler(num_blocks=2))
    with pytest.raises(ValueError, match="scheduler has total_time=2.0, the model 1.0"):
        JKOFlowPipeline(model=model, scheduler=FlowMapScheduler(total_time=2.0))
    with pytest.raises(ValueError, match="loss must be one of"):
        distill_flow_map(linear_field(), steps=1, loss="hamiltonian")
    with pytest.raises(ValueError, match=r"the student \(dim 2, total_time 1.0\) does not match the teacher"):
        distill_flow_map(linear_field(total_time=2.0), model, steps=1)
    with pytest.raises(ValueError, match="give a training budget"):
        distill_flow_map(linear_field())
    with pytest.raises(ValueError, match="pieces must be consecutive from t = 0"):
        VelocityField([(0.0, 0.5, lambda x, t: x), (0.6, 1.0, lambda x, t: x)], dim=2)
    with pytest.raises(ValueError, match="a velocity callable needs dim"):
        VelocityField.from_model(lambda x, t: x)
    flow = jko_flow()
    flow.flows.insert(1, nf.flows.Permute(2, mode="swap"))
    with pytest.raises(ValueError, match="all its steps are ODE blocks and no normflows layer"):
        VelocityField.from_model(flow)
