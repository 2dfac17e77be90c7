import math
import warnings

import numpy as np
import pytest
import torch

from jko_plugin import JKOBlock
from jko_plugin._ops import SOLVERS
from jko_plugin.sampling.scheduler import BOUNDARY_EPS, JKOScheduler, JKOSchedulerOutput
from jko_plugin.schedule import StepSchedule

from .flowcheck import perturb


class SchedulerContract:
    """diffusers' ``SchedulerCommonTest`` checks, run on every config in ``configs``, no special cases."""

    scheduler_class = None
    configs: tuple = ()
    sample_shapes = ((5,), (4, 3), (2, 3, 4, 4))

    def schedulers(self):
        for config in self.configs:
            yield config, self.scheduler_class(**config)

    def run_steps(self, scheduler, sample, num_steps, **kwargs):
        """Step through the first ``num_steps`` timesteps with diffusers' dummy residual 0.1 * sample."""
        scheduler.set_timesteps()
        outputs = []
        for t in scheduler.timesteps[:num_steps]:
            out = scheduler.step(0.1 * sample, t, sample, **kwargs)
            outputs.append(out)
            sample = out.prev_sample if isinstance(out, JKOSchedulerOutput) else out[0]
        return outputs

    def test_config_round_trip(self, tmp_path):
        for i, (config, scheduler) in enumerate(self.schedulers()):
            scheduler.save_pretrained(tmp_path / str(i))
            loaded = self.scheduler_class.from_pretrained(tmp_path / str(i))
            expected = {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
            assert dict(loaded.config) == expected
            again = self.scheduler_class.from_config(loaded.config)
            assert {k: v for k, v in again.config.items() if k in expected} == expected
            assert loaded.step_sizes == scheduler.step_sizes and loaded.block_types == scheduler.block_types

    def test_save_load_same_steps(self, tmp_path):
        sample = torch.rand(4, 3, dtype=torch.float64)
        for i, (config, scheduler) in enumerate(self.schedulers()):
            scheduler.save_pretrained(tmp_path / str(i))
            loaded = self.scheduler_class.from_pretrained(tmp_path / str(i))
            a = self.run_steps(scheduler, sample, 6)
            b = self.run_steps(loaded, sample, 6)
            for x, y in zip(a, b):
                torch.testing.assert_close(x.prev_sample, y.prev_sample, rtol=0, atol=0)

    def test_step_shape(self):
        for config, scheduler in self.schedulers():
            for shape in self.sample_shapes:
                sample = torch.rand(shape)
                outs = self.run_steps(scheduler, sample, 3)
                assert all(o.prev_sample.shape == sample.shape for o in outs)
                assert all(o.prev_sample.dtype == sample.dtype for o in outs)

    def test_tuple_equals_dataclass(self):
        sample = torch.rand(2, 3, 4)
        for config, scheduler in self.schedulers():
            as_dict = self.run_steps(scheduler, sample, 5)
            as_tuple = self.run_steps(self.scheduler_class(**config), sample, 5, return_dict=False)
            for d, t in zip(as_dict, as_tuple):
                assert isinstance(t, tuple) and len(t) == len(d)
                for a, b in zip(d.values(), t):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_generator_is_accepted_and_unused(self):
        sample = torch.rand(3, 2)
        for config, scheduler in self.schedulers():
            a = self.run_steps(scheduler, sample, 4, generator=torch.Generator().manual_seed(1))
            b = self.run_steps(
                self.scheduler_class(**config), sample, 4, generator=torch.Generator().manual_seed(2)
            )
            for x, y in zip(a, b):
                torch.testing.assert_close(x.prev_sample, y.prev_sample, rtol=0, atol=0)

    def test_contract_attributes(self):
        for config, scheduler in self.schedulers():
            sample = torch.rand(3, 2)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert scheduler.init_noise_sigma == 1.0
                assert scheduler.scale_model_input(sample, scheduler.timesteps[0]) is sample
                assert isinstance(scheduler.order, int) and scheduler.order >= 1
                for name in scheduler.config:  # every config entry reads as an attribute, no warning
                    if not name.startswith("_"):
                        getattr(scheduler, name)
                for name in (
                    "boundaries",
                    "intervals",
                    "proximal_weights",
                    "timesteps",
                    "num_inference_steps",
                ):
                    getattr(scheduler, name)
            compatibles = scheduler.compatibles
            assert compatibles and all(c is not None for c in compatibles)
            for cls in compatibles:
                other = cls.from_config(scheduler.config)
                back = self.scheduler_class.from_config(other.config)
                assert {k: v for k, v in back.config.items() if k in config} == {
                    k: v for k, v in scheduler.config.items() if k in config
                }


class TestJKOSchedulerContract(SchedulerContract):
    scheduler_class = JKOScheduler
    configs = (
        {},
        {"num_blocks": 3, "solver": "heun", "steps_per_block": 2},
        {"step_sizes": [0.1, 0.3, 0.2], "solver": "euler", "block_types": ["ode", "map", "ode"]},
        {"num_blocks": 5, "h0": 0.5, "growth": 2.0, "h_max": 2.5, "steps_per_block": 1},
    )


# -- the schedule --------------------------------------------------------------------------------
def test_geometric_default_is_the_step_schedules():
    s = JKOScheduler()
    assert s.num_blocks == 8 and s.config.num_blocks == 8
    assert s.schedule == StepSchedule.geometric(8)  # the one geometric rule and its one default
    for k, h in enumerate(s.step_sizes):
        assert h == pytest.approx(0.5 * 1.4**k, rel=1e-15)
    assert s.boundaries[0] == 0.0
    for k in range(1, 9):
        assert s.boundaries[k] == pytest.approx(sum(s.step_sizes[:k]), rel=1e-14)
    assert s.intervals[2] == (s.boundaries[2], s.boundaries[3])
    assert s.proximal_weights == tuple(1 / (2 * h) for h in s.step_sizes)


def test_h_max_caps_the_geometric_steps():
    s = JKOScheduler(num_blocks=5, h0=0.5, growth=2.0, h_max=2.5)
    assert s.step_sizes == (0.5, 1.0, 2.0, 2.5, 2.5)


def test_explicit_step_sizes_are_kept_as_floats():
    for given in ((1, 0.5), np.array([1.0, 0.5]), torch.tensor([1.0, 0.5])):
        s = JKOScheduler(step_sizes=given)
        assert s.num_blocks == 2 and s.config.step_sizes == [1.0, 0.5] and s.config.h0 is None
        assert type(s.config.step_sizes[0]) is float and s.boundaries == (0.0, 1.0, 1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"step_sizes": [0.1, 0.0]}, "step_sizes\\[1\\]"),
        ({"step_sizes": [0.1, -1.0]}, "step_sizes\\[1\\]"),
        ({"step_sizes": [float("nan")]}, "step_sizes\\[0\\]"),
        ({"step_sizes": []}, "step_sizes"),
        ({"step_sizes": "0.1"}, "step_sizes"),
        ({"num_blocks": 3, "step_sizes": [0.1, 0.2]}, "num_blocks=3"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"num_blocks": 2.5}, "num_blocks"),
        ({"h0": 0.0}, "h0"),
        ({"growth": -1.4}, "growth"),
        ({"h_max": 0}, "h_max"),
        ({"step_sizes": [0.1], "h0": 0.2}, "exclusive"),
        ({"solver": "rk45"}, "solver must be one of \\['euler', 'heun', 'rk4'\\], got 'rk45'"),
        ({"steps_per_block": 0}, "steps_per_block"),
        ({"num_blocks": 2, "block_types": ["ode"]}, "block_types"),
        ({"num_blocks": 2, "block_types": ["ode", "spline"]}, "'spline'"),
    ],
)
def test_bad_config_raises_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JKOScheduler(**kwargs)


# -- timesteps -----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_default_grid_runs_from_noise_to_data(solver):
    s = JKOScheduler(num_blocks=3, solver=solver, steps_per_block=2)
    stages = len(SOLVERS[solver].b)
    assert s.order == stages
    assert len(s.timesteps) == 3 * 2 * stages and s.num_inference_steps == 6
    assert s.timesteps.dtype == torch.float64
    assert s.timesteps[0] == s.boundaries[-1]
    assert torch.all(s.timesteps[1:] <= s.timesteps[:-1])
    if SOLVERS[solver].c[-1] == 1.0:
        assert s.timesteps[-1] == 0.0
        # a stage at a block's data-side end is nudged into the block (T_{k-1} belongs to block k-1)
        for k in (1, 2):
            t = s.boundaries[k] + BOUNDARY_EPS * s.step_sizes[k]
            assert any(abs(float(x) - t) < 1e-15 for x in s.timesteps)
    else:
        assert s.timesteps[-1] == pytest.approx(s.step_sizes[0] / 2)


def test_regrid_shares_steps_among_blocks():
    s = JKOScheduler(step_sizes=[0.1, 0.3, 0.2], solver="euler", steps_per_block=2)
    s.set_timesteps(num_inference_steps=8)  # 2 each, the remaining 2 to the longest blocks (0.3, 0.2)
    times = s.timesteps.tolist()
    assert s.num_inference_steps == 8 and len(times) == 8
    per_block = [sum(1 for t in times if a < t <= b + 1e-12 or (a == 0 and t == 0)) for a, b in s.intervals]
    assert per_block == [2, 3, 3]
    s.set_timesteps(num_inference_steps=6)
    assert s.timesteps.tolist() == JKOScheduler(**s.config).timesteps.tolist()  # = the default grid
    with pytest.raises(ValueError, match="at least the number of blocks"):
        s.set_timesteps(num_inference_steps=2)


def test_map_blocks_take_one_jump():
    s = JKOScheduler(step_sizes=[0.5, 1.0], block_types=["map", "ode"], steps_per_block=3)
    assert len(s.timesteps) == 3 * 4 + 1 and s.num_inference_steps == 4
    assert s.timesteps[-1] == 0.5  # the map block's single timestep is its noise end T_1
    s.set_timesteps()
    x = torch.randn(4, 2, dtype=torch.float64)
    for t in s.timesteps[:-1]:
        x = s.step(torch.zeros_like(x), t, x).prev_sample
    v = torch.randn_like(x)
    torch.testing.assert_close(s.step(v, s.timesteps[-1], x).prev_sample, x - 0.5 * v, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="at least the number of blocks"):
        JKOScheduler(step_sizes=[0.5], block_types=["map"]).set_timesteps(num_inference_steps=2)


def integrate(scheduler, x, velocity, num_inference_steps=None):
    scheduler.set_timesteps(num_inference_steps)
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_step_converges_with_the_solver_order(solver, order):
    # dx/dt = cos(t) x: from T back to 0, x(0) = x(T) exp(-sin T) (smooth in t across blocks).
    s = JKOScheduler(step_sizes=[0.4, 0.6], solver=solver)
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    exact = x * math.exp(-math.sin(1.0))
    errors = [
        float((integrate(s, x, lambda y, t: torch.cos(t) * y, n) - exact).abs().max()) for n in (8, 16, 32)
    ]
    rates = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert all(abs(r - order) < 0.3 for r in rates), (errors, rates)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_matches_jko_block_forward(solver):
    block = JKOBlock(3, (16,), solver=solver, steps=3).double()
    perturb(block, 0.8)
    block.set_interval(0.0, 0.75)  # exact in float32: set_interval goes through a float32 tensor
    s = JKOScheduler(step_sizes=[0.75], solver=solver, steps_per_block=3)
    z = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        x = integrate(s, z, block.velocity_at)
        torch.testing.assert_close(x, block.forward(z)[0], rtol=0, atol=1e-13)


def test_step_checks_order_and_end():
    s = JKOScheduler(num_blocks=1, steps_per_block=1)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="does not start a solver step"):
        s.step(x, s.timesteps[1], x)  # the middle of an RK4 step
    s.set_timesteps()
    s.step(x, s.timesteps[0], x)
    with pytest.raises(ValueError, match="expected timestep"):
        s.step(x, s.timesteps[0], x)
    for t in s.timesteps[1:]:
        s.step(x, t, x)
    with pytest.raises(ValueError, match="finished"):
        s.step(x, s.timesteps[-1], x)
    s.set_timesteps()
    with pytest.raises(ValueError, match="shape"):
        s.step(torch.zeros(3, 2), s.timesteps[0], x)


# -- refine and reparametrize ---------------------------------------------------------------------
def test_refine_halves_every_interval():
    s = JKOScheduler(step_sizes=[0.2, 0.4], solver="heun", steps_per_block=3, block_types=["map", "ode"])
    r = s.refine()
    assert r.num_blocks == 4 and r.step_sizes == (0.1, 0.1, 0.2, 0.2)
    assert r.boundaries[-1] == pytest.approx(s.boundaries[-1], rel=1e-15)
    assert r.block_types == ("map", "map", "ode", "ode")
    assert (r.config.solver, r.config.steps_per_block) == ("heun", 3)


def movement(speed, a, b, n=4000):
    """W2 movement over [a, b] of a curve with W2 speed ``speed(t)`` (midpoint rule)."""
    dt = (b - a) / n
    return sum(speed(a + (i + 0.5) * dt) for i in range(n)) * dt


def test_reparametrize_equalises_piecewise_constant_speed():
    # Speed constant inside each old block: the rule is exact, every new block moves total / N.
    s = JKOScheduler(step_sizes=[0.25, 0.35, 0.49, 0.69])
    rates = [4.0, 1.5, 0.5, 0.1]

    def speed(t):
        k = min(max(i for i, T in enumerate(s.boundaries[:-1]) if t >= T), 3)
        return rates[k]

    m = [r * h for r, h in zip(rates, s.step_sizes)]
    new = s.reparametrize(m)
    assert new.num_blocks == 4 and new.boundaries[-1] == pytest.approx(s.boundaries[-1], rel=1e-14)
    assert new.config.solver == s.config.solver and new.config.steps_per_block == s.config.steps_per_block
    moved = [movement(speed, a, b) for a, b in new.intervals]
    assert max(moved) - min(moved) < 1e-3 * sum(m) / 4, moved
    assert sum(moved) == pytest.approx(sum(m), rel=1e-3)


def test_reparametrize_iterates_to_equal_movement_for_exponential_speed():
    # Proximal gradient descent in W2 slows down geometrically: speed e^{-2t}.
    def speed(t):
        return math.exp(-2 * t)

    s = JKOScheduler(num_blocks=6)
    spreads = []
    for _ in range(8):  # the spread shrinks about 3-fold per round
        m = [movement(speed, a, b, 400) for a, b in s.intervals]
        spreads.append((max(m) - min(m)) / (sum(m) / len(m)))
        s = s.reparametrize(m)
    assert spreads[0] > 1.0 and spreads[-1] < 1e-3 and all(b < a for a, b in zip(spreads, spreads[1:])), (
        spreads
    )


@pytest.mark.parametrize(
    "movements", [[1.0, 2.0], [1.0, 0.0, 1.0], [1.0, float("inf"), 1.0], [1.0, -1.0, 2.0]]
)
def test_reparametrize_rejects_bad_movements(movements):
    with pytest.raises(ValueError, match="movements"):
        JKOScheduler(num_blocks=3).reparametrize(movements)
