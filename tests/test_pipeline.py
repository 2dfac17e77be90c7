import doctest
import json
import os
import subprocess
import sys
import textwrap
import warnings

import normflows as nf
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

import jko_plugin.sampling.model
import jko_plugin.sampling.pipeline
import jko_plugin.sampling.scheduler
from jko_plugin import JKOBlock, JKOStep
from jko_plugin.sampling.model import JKOFlowModel
from jko_plugin.sampling.pipeline import JKOFlowPipeline, JKOFlowPipelineOutput
from jko_plugin.sampling.scheduler import JKOScheduler
from jko_plugin.steps.layers import LAYER_TYPES, build_layer, describe_layer

from .flowcheck import perturb

DIM = 2


def spline_step(dim=DIM):
    layers = [
        nf.flows.AutoregressiveRationalQuadraticSpline(dim, 1, 8, permute_mask=True, init_identity=False),
        nf.flows.LULinearPermute(dim, identity_init=False),
        nf.flows.ActNorm((dim,)),
    ]
    return JKOStep(layers, dim=dim)


def make_flow(kinds=("ode", "ode", "ode"), solver="rk4", steps=3, dtype=torch.float64):
    """A random JKO flow (normflows order: flows[0] = block N); ODE blocks on their schedule intervals."""
    steps_sizes = [0.25, 0.35, 0.5, 0.7][: len(kinds)]
    bounds = np.concatenate([[0.0], np.cumsum(steps_sizes)])
    flows = []
    for k in reversed(range(len(kinds))):  # block k+1, from the noise side
        if kinds[k] == "ode":
            block = JKOBlock(DIM, (16,), solver=solver, steps=steps, interval=(bounds[k], bounds[k + 1]))
        else:
            block = spline_step()
        perturb(block, 0.8)
        flows.append(block)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False), flows).to(dtype)
    with torch.no_grad():  # ActNorm's data-dependent initialisation, once
        flow.forward(torch.randn(64, DIM, dtype=dtype))
    return flow, steps_sizes


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- model ---------------------------------------------------------------------------------------
def test_from_normflows_shares_the_trained_tensors():
    flow, h = make_flow(("ode", "map", "ode"))
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    for a, b in zip(model.flows, flow.flows):
        assert a is b
    assert [p.data_ptr() for p in model.parameters()] == [p.data_ptr() for p in flow.flows.parameters()]
    back = model.to_normflows()
    assert all(a is b for a, b in zip(back.flows, flow.flows))
    assert isinstance(back.q0, nf.distributions.DiagGaussian) and not list(back.q0.parameters())
    z = torch.randn(5, DIM, dtype=torch.float64)
    torch.testing.assert_close(back.forward(z), flow.forward(z), rtol=0, atol=0)
    assert model.block_types == ("ode", "map", "ode") and model.step_sizes == tuple(h)


def test_from_normflows_reads_the_steps_intervals_or_needs_a_schedule():
    flow, h = make_flow(("ode", "ode"))
    model = JKOFlowModel.from_normflows(flow)
    assert model.step_sizes == pytest.approx(h, rel=1e-7)  # from the blocks' (float32) intervals
    flow, h = make_flow(("ode", "map", "ode"))  # the map step was never placed on the time axis
    with pytest.raises(ValueError, match="block 2 starts at t = 0.0.*StepSchedule.place"):
        JKOFlowModel.from_normflows(flow)
    with pytest.raises(ValueError, match=r"block 1 is placed on \(0.0, 0.25\), the schedule puts it on"):
        JKOFlowModel.from_normflows(flow, schedule=[0.3, 0.3, 0.5])


def test_forward_uses_the_block_of_each_time():
    flow, h = make_flow(("ode", "map", "ode"))
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    x = torch.randn(4, DIM, dtype=torch.float64)
    top = flow.flows[0]  # block 3 on [0.6, 1.1]
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0.85).sample, top.velocity(x, 0.5) / 0.5)
        torch.testing.assert_close(
            model(x, torch.tensor(1.1, dtype=torch.float64)).sample, top.velocity(x, 1.0) / 0.5
        )
        torch.testing.assert_close(model(x, 0.6 + 1e-9).sample, top.velocity(x, 2e-9) / 0.5)
        # block 2 is a map F: at T_2 = 0.6 the model returns the secant velocity (x - F(x)) / h_2
        torch.testing.assert_close(model(x, 0.6).sample, (x - flow.flows[1](x)[0]) / 0.35)
        torch.testing.assert_close(model(x, 0.0).sample, flow.flows[2].velocity(x, 0.0) / 0.25)
    assert [model.schedule.block_at(t) for t in (0.0, 0.1, 0.25, 0.2500001, 0.6, 1.1)] == [1, 1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="defined at t = 0.6"):
        model(x, 0.4)
    with pytest.raises(ValueError, match="time axis"):
        model(x, 1.2)
    with pytest.raises(ValueError, match=r"of shape \(batch,\) = \(4,\), got shape \(2,\)"):
        model(x, torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("name", sorted(LAYER_TYPES))
def test_every_supported_layer_is_rebuilt_from_its_description(name):
    cls = LAYER_TYPES[name].cls
    makers = {
        "AutoregressiveRationalQuadraticSpline": lambda: cls(
            3, 2, 8, num_bins=5, tail_bound=2.5, activation=torch.nn.Tanh, permute_mask=True
        ),
        "AutoregressiveRQSpline": lambda: cls(3, 2, 8, num_bins=5, tail_bound=2.5, activation=torch.nn.Tanh),
        "CoupledRationalQuadraticSpline": lambda: cls(3, 1, 8, reverse_mask=True, activation=torch.nn.ELU),
        "LULinearPermute": lambda: cls(3, identity_init=False),
        "Permute": lambda: cls(3, mode="shuffle"),
        "ActNorm": lambda: cls((3,)),
        "IdentityInitCoupledRQSpline": lambda: cls(3, 1, 8, reverse_mask=True, activation=torch.nn.ELU),
        "IdentityInitLULinear": lambda: cls(3),
        "Standardize": lambda: cls(3, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 1.0, 2.0])),
        "AffineConstFlow": lambda: cls((3,), shift=False),
        "GridRQSpline": lambda: cls(given=1, num_bins=5, knots=4, tail_bound=2.5, read_at="latent"),
    }
    layer = makers[name]().double()
    perturb(layer, 0.5)
    spec = json.loads(json.dumps(describe_layer(layer)))
    rebuilt = build_layer(spec).double()
    rebuilt.load_state_dict(layer.state_dict(), strict=True)
    z = torch.randn(7, 2 if name == "GridRQSpline" else 3, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(layer(z), rebuilt(z)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unsupported_layers_and_bases_are_rejected():
    planar = JKOStep([nf.flows.Planar((DIM,))], dim=DIM)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False), [planar])
    with pytest.raises(ValueError, match="cannot save a Planar layer; supported: \\['ActNorm'"):
        JKOFlowModel.from_normflows(flow, schedule=[1.0])
    lrelu = JKOStep(
        [nf.flows.AutoregressiveRationalQuadraticSpline(DIM, 1, 4, activation=torch.nn.Sigmoid)], dim=DIM
    )
    lrelu.flows[0].mprqat.autoregressive_net.blocks[0].activation = torch.nn.LeakyReLU(0.3)
    with pytest.raises(ValueError, match="default arguments"):
        JKOFlowModel.from_normflows(nf.NormalizingFlow(flow.q0, [lrelu]), schedule=[1.0])
    q0 = nf.distributions.DiagGaussian(DIM, trainable=False)
    q0.loc += 1.0
    with pytest.raises(ValueError, match="standard normal"):
        JKOFlowModel.from_normflows(nf.NormalizingFlow(q0, [JKOBlock(DIM)]))
    with pytest.raises(ValueError, match="cannot save this flow: cannot save a Planar layer"):
        JKOFlowModel.from_normflows(nf.NormalizingFlow(flow.q0, [nf.flows.Planar((DIM,))]), schedule=[1.0])


def test_bad_model_config_raises():
    ode = {"type": "ode", "kwargs": JKOBlock(DIM).config()}
    with pytest.raises(ValueError, match="one entry per JKO step"):
        JKOFlowModel(dim=DIM, blocks=[ode, ode], step_sizes=[0.5])
    with pytest.raises(ValueError, match="step_sizes\\[0\\]"):
        JKOFlowModel(dim=DIM, blocks=[ode], step_sizes=[0.0])
    with pytest.raises(
        ValueError, match="layer type must be one of \\['layer', 'map', 'ode'\\], got 'spline'"
    ):
        JKOFlowModel(dim=DIM, blocks=[{"type": "spline"}], step_sizes=[0.5])
    with pytest.raises(ValueError, match="has dim 2, the model has dim 3"):
        JKOFlowModel(dim=3, blocks=[ode], step_sizes=[0.5])


# -- pipeline = normflows ------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["rk4", "heun", "euler"])
@pytest.mark.parametrize("kinds", [("ode", "ode", "ode"), ("map", "ode", "map", "ode")])
def test_pipeline_samples_equal_normflows_forward(solver, kinds):
    flow, h = make_flow(kinds, solver=solver)
    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=h))
    assert pipe.scheduler.config.solver == solver and pipe.scheduler.config.steps_per_block == 3
    z = torch.randn(32, DIM, dtype=torch.float64)
    out = pipe(latents=z).samples
    with torch.no_grad():
        ref = flow.forward(z)
    # the only difference: stages at a block's data end are evaluated 1e-9 h inside the block
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
    x = ref[:8]
    with torch.no_grad():
        torch.testing.assert_close(pipe.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-12)


def test_pipeline_from_a_trained_schedule_and_regridded_steps():
    flow, h = make_flow(("ode", "ode"), steps=4)
    schedule = JKOScheduler(step_sizes=h, steps_per_block=4)
    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=schedule))
    z = torch.randn(16, DIM, dtype=torch.float64)
    with torch.no_grad():
        ref = flow.forward(z)
    coarse = (pipe(latents=z, num_inference_steps=2).samples - ref).abs().max()
    fine = (pipe(latents=z, num_inference_steps=16).samples - ref).abs().max()
    assert fine < coarse and fine < 1e-5 < coarse  # RK4 on finer grids converges to the same ODE flow


def test_pipeline_call_options():
    flow, h = make_flow(("ode", "map"), dtype=torch.float32)
    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=h))
    a = pipe(batch_size=6, generator=torch.Generator().manual_seed(3))
    b = pipe(batch_size=6, generator=torch.Generator().manual_seed(3), output_type="np", return_dict=False)
    c = pipe(batch_size=6, generator=torch.Generator().manual_seed(4)).samples
    assert (
        isinstance(a, JKOFlowPipelineOutput)
        and a.samples.shape == (6, DIM)
        and a.samples.dtype == torch.float32
    )
    assert isinstance(b, tuple) and isinstance(b[0], np.ndarray)
    np.testing.assert_array_equal(a.samples.numpy(), b[0])
    assert not torch.allclose(a.samples, c)
    assert pipe().samples.shape == (1, DIM)
    seen = []
    pipe.progress_bar = lambda it: seen.append(len(it)) or it
    pipe(batch_size=2)
    assert seen == [len(pipe.scheduler.timesteps)]
    with pytest.raises(ValueError, match="output_type must be one of \\['np', 'pt'\\], got 'pil'"):
        pipe(output_type="pil")
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(latents=torch.randn(3, DIM + 1))
    with pytest.raises(ValueError, match="batch_size=2 but latents hold 3"):
        pipe(batch_size=2, latents=torch.randn(3, DIM))


def test_pipeline_rejects_mismatched_components():
    flow, h = make_flow(("ode", "map"))
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    with pytest.raises(ValueError, match="num_blocks=3"):
        JKOFlowPipeline(model, JKOScheduler(num_blocks=3))
    with pytest.raises(ValueError, match="block_types"):
        JKOFlowPipeline(model, JKOScheduler(step_sizes=h))
    with pytest.raises(ValueError, match="boundaries"):
        JKOFlowPipeline(model, JKOScheduler(step_sizes=[0.25, 0.36], block_types=["ode", "map"]))
    with pytest.raises(ValueError, match="needs a JKOScheduler"):
        JKOFlowPipeline(model, FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="exclusive"):
        JKOFlowPipeline.from_normflows(flow, scheduler=JKOScheduler(step_sizes=h), solver="rk4")
    mixed, h = make_flow(("ode", "ode"))
    mixed.flows[0].steps = 5
    with pytest.raises(ValueError, match="different steps values \\[3, 5\\]: pass steps_per_block"):
        JKOFlowPipeline.from_normflows(mixed)


def test_a_scheduler_that_samples_another_map_than_the_blocks_warns():
    flow, h = make_flow(("ode", "ode"))
    steps = flow.flows[0].steps
    with pytest.warns(UserWarning, match=f"samples with 5 rk4 steps per block, .* {steps} rk4 steps"):
        pipe = JKOFlowPipeline.from_normflows(flow, scheduler=JKOScheduler(step_sizes=h, steps_per_block=5))
    assert pipe.scheduler.steps_per_block == 5  # the user's choice stands
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own = JKOScheduler(step_sizes=h, steps_per_block=steps)
        same = JKOFlowPipeline.from_normflows(flow, scheduler=own)
    z = torch.randn(64, DIM, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(quiet(same)(latents=z).samples, flow.forward(z), rtol=1e-10, atol=1e-10)


# -- save and load -------------------------------------------------------------------------------
def test_model_config_round_trip(tmp_path):
    flow, h = make_flow(("map", "ode"))
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    model.save_pretrained(tmp_path)
    loaded = JKOFlowModel.from_pretrained(tmp_path)
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    assert loaded.dtype == torch.float64
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == m
        torch.testing.assert_close(a, b, rtol=0, atol=0)


LOAD_AND_SAMPLE = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from jko_plugin.sampling.pipeline import JKOFlowPipeline
    pipe = JKOFlowPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    x = pipe(batch_size=16, generator=torch.Generator().manual_seed(7)).samples
    z = torch.from_numpy(np.load(sys.argv[2]))
    logp = pipe.log_prob(z).numpy()[:, None].repeat(2, 1)
    np.save(sys.argv[3], np.stack([x.numpy(), pipe(latents=z).samples.numpy(), logp]))
    """
)


def test_pipeline_save_load_in_a_fresh_offline_process(tmp_path):
    flow, h = make_flow(("ode", "map", "ode"))
    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=h))
    pipe.save_pretrained(tmp_path / "pipe")
    z = torch.randn(16, DIM, dtype=torch.float64)
    np.save(tmp_path / "z.npy", z.numpy())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_AND_SAMPLE,
            str(tmp_path / "pipe"),
            str(tmp_path / "z.npy"),
            str(tmp_path / "o.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    got = np.load(tmp_path / "o.npy", allow_pickle=False)
    expected = [
        pipe(batch_size=16, generator=torch.Generator().manual_seed(7)).samples.numpy(),
        pipe(latents=z).samples.numpy(),
        pipe.log_prob(z).numpy()[:, None].repeat(2, 1),
    ]
    np.testing.assert_array_equal(got, np.stack(expected))


def test_loading_errors_name_the_file(tmp_path):
    flow, h = make_flow(("ode", "map"))
    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=h))

    def saved(name):
        pipe.save_pretrained(tmp_path / name)
        return tmp_path / name

    weights = saved("a") / "model" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        JKOFlowPipeline.from_pretrained(tmp_path / "a")
    weights = saved("b") / "model" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):
        JKOFlowPipeline.from_pretrained(tmp_path / "b")
    (saved("c") / "model" / "config.json").write_text("{not json")
    with pytest.raises(OSError, match="config.json"):
        JKOFlowPipeline.from_pretrained(tmp_path / "c")
    (saved("d") / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        JKOFlowPipeline.from_pretrained(tmp_path / "d")
    (saved("e") / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(OSError, match="scheduler_config.json"):
        JKOFlowPipeline.from_pretrained(tmp_path / "e")
    config = saved("f") / "model" / "config.json"
    config.write_text(config.read_text().replace('"step_sizes": [\n    0.25', '"step_sizes": [\n    -0.25'))
    with pytest.raises(ValueError, match="config.json.*step_sizes\\[0\\]"):
        JKOFlowPipeline.from_pretrained(tmp_path / "f")
    # weights that do not fit the config: a model with other blocks under the same names
    other, _ = make_flow(("ode", "ode"))
    JKOFlowModel.from_normflows(other, schedule=h).save_pretrained(saved("g") / "x")
    os.replace(
        tmp_path / "g" / "x" / "diffusion_pytorch_model.safetensors",
        tmp_path / "g" / "model" / "diffusion_pytorch_model.safetensors",
    )
    with pytest.raises(ValueError, match="weights in .*diffusion_pytorch_model.safetensors do not match"):
        JKOFlowPipeline.from_pretrained(tmp_path / "g")


# -- flow matching through the same pipeline ---------------------------------------------------------
class GaussianPathVelocity(ModelMixin, ConfigMixin):
    """Exact velocity of the linear path x_s = (1 - s) x0 + s eps, x0 ~ N(m, sd^2 I), in diffusers'
    flow-matching convention (``timestep = 1000 s``, returns dx/ds). Its flow maps z to m + sd z."""

    @register_to_config
    def __init__(self, dim: int = 2, mean: float = 1.5, std: float = 0.5):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a dtype and a device

    def forward(self, sample, timestep):
        s = timestep.to(sample.dtype) / 1000.0
        m, sd, a = self.config.mean, self.config.std, 1.0 - s
        var = a * a * sd * sd + s * s
        return (s - a * sd * sd) / var * (sample - a * m) - m + 0 * self.anchor


def test_flow_matching_model_and_scheduler_through_the_same_pipeline():
    model = GaussianPathVelocity()
    pipe = quiet(JKOFlowPipeline(model=model, scheduler=FlowMatchEulerDiscreteScheduler()))
    z = torch.randn(256, 2)
    errors = []
    for n in (25, 50, 100):
        x = pipe(latents=z, num_inference_steps=n).samples
        errors.append(float((x - (1.5 + 0.5 * z)).abs().max()))
    # Euler is first order: the error halves with the step (0.123, 0.061, 0.030 in float32).
    assert errors[-1] < 4e-2 and 1.6 < errors[0] / errors[1] < 2.4 and 1.6 < errors[1] / errors[2] < 2.4, (
        errors
    )
    x = pipe(batch_size=4000, num_inference_steps=50, generator=torch.Generator().manual_seed(0)).samples
    assert abs(float(x.mean()) - 1.5) < 0.03 and abs(float(x.std()) - 0.5) < 0.03
    with pytest.raises(ValueError, match="num_inference_steps is required"):
        pipe(batch_size=2)
    with pytest.raises(TypeError, match="log_prob needs a JKOFlowModel"):
        pipe.log_prob(z)


class Exponential(ModelMixin, ConfigMixin):
    """A velocity model without ``config.dim``: dx/dt = x, so x(0) = z exp(-T) from x(T) = z."""

    @register_to_config
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, sample, timestep):
        return sample


def test_any_velocity_module_runs_on_the_jko_time_axis():
    pipe = quiet(JKOFlowPipeline(model=Exponential(), scheduler=JKOScheduler(step_sizes=[0.5, 1.0])))
    z = torch.randn(5, 3, dtype=torch.float64)
    x = pipe(latents=z).samples
    assert x.dtype == torch.float64
    # RK4 multiplies by R(-dt) = 1 - dt + dt^2/2 - dt^3/6 + dt^4/24 per step: the default 3 steps
    # per block, of 1/3 and of 1/6
    factor = np.prod([1 - d + d**2 / 2 - d**3 / 6 + d**4 / 24 for d in [1 / 3] * 3 + [1 / 6] * 3])
    torch.testing.assert_close(x, z * factor, rtol=1e-14, atol=0)
    assert abs(factor / np.exp(-1.5) - 1) < 2e-4
    with pytest.raises(ValueError, match="no config.dim: pass latents"):
        pipe(batch_size=2)


def test_docstring_examples_run():
    for module in (jko_plugin.sampling.scheduler, jko_plugin.sampling.model, jko_plugin.sampling.pipeline):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# -- trainer + scheduler + pipeline, end to end ------------------------------------------------------
MEAN, STD = torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.5])


def exact_jko_movements(step_sizes, mean=MEAN.double(), std=STD.double()):
    """W2 distance moved by each exact JKO step on N(mean, diag std^2) towards N(0, I) (DESIGN.md):
    the mean becomes m / (1 + h), each std s becomes a s with (1 + h) a^2 s^2 - a s^2 - h = 0."""
    out = []
    for h in step_sizes:
        s2 = std**2
        a = (s2 + torch.sqrt(s2**2 + 4 * (1 + h) * s2 * h)) / (2 * (1 + h) * s2)
        new_mean, new_std = mean / (1 + h), a * std
        out.append(float(torch.sqrt((new_mean - mean).square().sum() + (new_std - std).square().sum())))
        mean, std = new_mean, new_std
    return out


def spread(movements):
    return (max(movements) - min(movements)) / (sum(movements) / len(movements))


@pytest.mark.parametrize("block, iterations", [("ode", 150), ("spline", 100)])
def test_trainer_scheduler_pipeline_end_to_end_on_a_gaussian(block, iterations, tmp_path):
    from jko_plugin import JKOTrainer, make_flow

    x = torch.randn(2048, 2, generator=torch.Generator().manual_seed(1)) * STD + MEAN
    schedule = JKOScheduler(num_blocks=3 if block == "ode" else 2, h0=1.0, growth=2.0, steps_per_block=2)
    kw = {"hidden": (16,), "steps": 2} if block == "ode" else {"layers": 1, "hidden": 16}
    flow = make_flow(2, schedule.num_blocks, block=block, **kw)
    trainer = JKOTrainer(flow, schedule, iterations=iterations, batch_size=256, lr=5e-3, progress=False)
    history = trainer.fit(x)

    # the trainer took its step sizes from the scheduler: ODE blocks move as the exact JKO steps do
    # (spline steps hold a random permutation, which adds displacement of its own)
    moved = [r.w2_movement for r in history.blocks]
    assert [r.step_size for r in history.blocks] == pytest.approx(schedule.step_sizes)
    if block == "ode":
        for got, want in zip(moved, exact_jko_movements(schedule.step_sizes)):
            assert abs(got - want) < 0.05 * want, (moved, exact_jko_movements(schedule.step_sizes))

    pipe = quiet(JKOFlowPipeline.from_normflows(flow, scheduler=schedule))
    assert pipe.scheduler.block_types == (("ode",) if block == "ode" else ("map",)) * schedule.num_blocks
    z = torch.randn(512, 2)
    with torch.no_grad():
        torch.testing.assert_close(pipe(latents=z).samples, flow.forward(z), rtol=0, atol=1e-5)
    samples = pipe(batch_size=4000, generator=torch.Generator().manual_seed(0)).samples
    if block == "ode":  # a converged flow: samples with the data's moments
        assert (samples.mean(0) - MEAN).abs().max() < 0.1 and ((samples.std(0) / STD) - 1).abs().max() < 0.1
    else:  # make_spline_step's layers survive save / load
        pipe.save_pretrained(tmp_path)
        again = quiet(JKOFlowPipeline.from_pretrained(tmp_path))
        again = again(batch_size=4000, generator=torch.Generator().manual_seed(0)).samples
        torch.testing.assert_close(again, samples, rtol=0, atol=0)

    # JKO-iFlow's adaptive re-spacing from the measured movements: exact JKO steps on the re-spaced
    # schedule move more evenly (same total time)
    respaced = schedule.reparametrize(moved)
    assert respaced.boundaries[-1] == pytest.approx(schedule.boundaries[-1], rel=1e-12)
    if block == "ode":
        before, after = (spread(exact_jko_movements(s.step_sizes)) for s in (schedule, respaced))
        assert after < 0.6 * before, (before, after)


# -- one time axis: blocks placed by hand, layers between steps ------------------------------------
def test_blocks_placed_on_a_schedulers_boundaries_sample_exactly_forward():
    # As a new user writes it: float32 blocks on JKOScheduler(step_sizes=[0.3, 0.5, 0.8])'s intervals.
    scheduler = JKOScheduler(step_sizes=[0.3, 0.5, 0.8], steps_per_block=3)
    blocks = [JKOBlock(DIM, (16,), steps=3, interval=span) for span in scheduler.intervals]
    for b in blocks:
        perturb(b, 0.8)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False), blocks[::-1])
    pipe = quiet(JKOFlowPipeline(model=JKOFlowModel.from_normflows(flow), scheduler=scheduler))
    assert pipe.model.schedule == scheduler.schedule  # the model took the scheduler's float64 axis
    z = torch.randn(64, DIM)
    with torch.no_grad():
        ref = flow.forward(z)
    torch.testing.assert_close(pipe(latents=z).samples, ref, rtol=0, atol=1e-6)
    double = quiet(JKOFlowPipeline(model=JKOFlowModel.from_normflows(flow.double()), scheduler=scheduler))
    with torch.no_grad():
        # the only difference: stages at a block's data end are evaluated 1e-9 h inside the block
        torch.testing.assert_close(
            double(latents=z.double()).samples, flow.forward(z.double()), rtol=0, atol=1e-9
        )
    # a block placed elsewhere is named
    blocks[1].set_interval(0.3, 0.9)
    with pytest.raises(ValueError, match="block 3 starts at t = 0.8, but the time axis reaches 0.9"):
        JKOFlowModel.from_normflows(flow)
    blocks[2].set_interval(0.9, 1.7)
    with pytest.raises(ValueError, match="time axis does not match the model's"):
        JKOFlowPipeline(model=JKOFlowModel.from_normflows(flow), scheduler=scheduler)


def flow_with_layers(dtype=torch.float64):
    """Data side first: ActNorm, ODE block, LU permutation, spline step, ActNorm, ODE block, (latent)."""
    from jko_plugin.schedule import StepSchedule
    from jko_plugin.steps.kinds import make_spline_step

    steps = [JKOBlock(DIM, (16,), steps=2), make_spline_step(DIM, hidden=8), JKOBlock(DIM, (16,), steps=2)]
    StepSchedule((0.4, 0.6, 0.9)).place(steps)
    data_first = [
        nf.flows.ActNorm((DIM,)),
        steps[0],
        nf.flows.LULinearPermute(DIM, identity_init=False),
        steps[1],
        nf.flows.ActNorm((DIM,)),
        steps[2],
    ]
    for layer in data_first:
        perturb(layer, 0.6)
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(DIM, trainable=False), data_first[::-1]).to(dtype)
    with torch.no_grad():  # ActNorm's data-dependent initialisation, once
        flow.inverse(torch.randn(64, DIM, dtype=dtype) * 2 + 1)
    return flow


def test_normflows_layers_between_steps_are_layer_events():
    flow = flow_with_layers()
    pipe = quiet(JKOFlowPipeline.from_normflows(flow))
    # boundaries T_0 (ActNorm), T_1 (LU permutation) and T_2 (ActNorm) carry layers
    assert pipe.model.layer_boundaries == pipe.scheduler.layer_boundaries == (0, 1, 2)
    assert pipe.model.block_types == pipe.scheduler.block_types == ("ode", "map", "ode")
    z = torch.randn(32, DIM, dtype=torch.float64)
    with torch.no_grad():
        ref = flow.forward(z)
        torch.testing.assert_close(pipe(latents=z).samples, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(pipe.log_prob(ref[:8]), flow.log_prob(ref[:8]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="layer_boundaries"):
        JKOFlowPipeline(
            pipe.model, JKOScheduler(step_sizes=[0.4, 0.6, 0.9], block_types=["ode", "map", "ode"])
        )


def test_a_model_with_actnorm_between_blocks_saves_and_reloads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flow = flow_with_layers(torch.float32)
    pipe = quiet(JKOFlowPipeline.from_normflows(flow))
    pipe.save_pretrained(tmp_path / "m")
    loaded = quiet(JKOFlowPipeline.from_pretrained(tmp_path / "m"))
    assert [type(f).__name__ for f in loaded.model.flows] == [type(f).__name__ for f in flow.flows]
    assert loaded.model.dtype == torch.float32 and loaded.scheduler.layer_boundaries == (0, 1, 2)
    z = torch.randn(32, DIM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents=z).samples, flow.forward(z), rtol=0, atol=1e-5)
        x = flow.forward(z)
        torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-5)
