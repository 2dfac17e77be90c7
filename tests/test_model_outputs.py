"""diffusers ModelMixin conventions of our velocity models: output dataclass, return_dict, timesteps."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from jko_plugin.adapters.flow_matching import FlowMatchingModel, sample_with_scheduler

from jko_plugin.sampling.model import JKOFlowModel, VelocityOutput

from .test_pipeline import make_flow


def test_jko_model_returns_an_output_with_sample_or_a_tuple():
    flow, h = make_flow(("ode", "map", "ode"))
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, 0.85)
        assert isinstance(out, VelocityOutput) and isinstance(out, BaseOutput)
        (v,) = model(x, 0.85, return_dict=False)
        torch.testing.assert_close(out.sample, v, rtol=0, atol=0)
        torch.testing.assert_close(out.sample, flow.flows[0].velocity_at(x, 0.85), rtol=0, atol=0)
        # What a pipeline passes: the time broadcast to the batch.
        same = model(x, torch.full((5,), 0.85, dtype=torch.float64)).sample
        torch.testing.assert_close(same, v, rtol=0, atol=0)


def test_jko_model_with_a_time_per_row_gives_each_row_its_own_steps_velocity():
    flow, h = make_flow(("ode", "map", "ode"))  # steps on [0, .25], [.25, .6], [.6, 1.1]
    model = JKOFlowModel.from_normflows(flow, schedule=h)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.85, 0.6, 0.1, 1.1, 0.0], dtype=torch.float64)  # 0.6: the map step's T_2
    with torch.no_grad():
        got = model(x, t).sample
        for i in range(6):
            torch.testing.assert_close(got[i : i + 1], model(x[i : i + 1], float(t[i])).sample)
    with pytest.raises(ValueError, match="defined at t = 0.6"):  # a map step away from its T_k
        model(x, torch.tensor([0.1, 0.4, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64))


def test_flow_matching_model_takes_scalar_or_per_row_timesteps():
    torch.manual_seed(0)
    model = FlowMatchingModel(2).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 0.5, 0.9], dtype=torch.float64)
    out = model(x, sigma * 1000)
    assert isinstance(out, VelocityOutput)
    torch.testing.assert_close(out.sample, model.velocity(x, sigma))
    torch.testing.assert_close(model(x, 500.0, return_dict=False)[0], model.velocity(x, 0.5))
    torch.testing.assert_close(model(x, torch.tensor([500.0])).sample, model.velocity(x, 0.5))
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        model(x, torch.ones(3))
    with pytest.raises(ValueError, match="sample has trailing dimension 3"):
        model(torch.randn(4, 3, dtype=torch.float64), 10.0)


def test_diffusers_scheduler_loop_still_samples_the_flow_matching_model():
    torch.manual_seed(0)
    model = FlowMatchingModel(2).double()
    z = torch.randn(8, 2, dtype=torch.float64)
    got = sample_with_scheduler(model, FlowMatchEulerDiscreteScheduler(), z, num_inference_steps=4)
    # The same four Euler steps by hand on diffusers' sigma grid (1, .75, .5, .25 -> 0).
    x = z
    for s, s_next in ((1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)):
        x = x + (s_next - s) * model.velocity(x, s)
    torch.testing.assert_close(got, x.detach(), atol=2e-4, rtol=0)  # diffusers keeps sigmas in float32
