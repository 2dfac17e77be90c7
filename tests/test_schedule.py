"""The time axis: StepSchedule owns h_k and T_k, places steps, and re-spaces itself."""

import pytest
import torch

from jko_plugin import JKOBlock, JKOScheduler, StepSchedule, make_flow
from jko_plugin.schedule import FLOAT32_RTOL, GEOMETRIC_GROWTH, GEOMETRIC_H0
from jko_plugin.steps import jko_steps


def test_geometric_rule_and_its_one_default():
    s = StepSchedule.geometric(4)
    assert s.step_sizes == tuple(GEOMETRIC_H0 * GEOMETRIC_GROWTH**k for k in range(4))
    assert StepSchedule.geometric(3, h0=1.0, growth=2.0, h_max=3.0).step_sizes == (1.0, 2.0, 3.0)
    # every owner derives the same default: the scheduler, RunConfig and make_flow
    from jko_plugin.workflows import RunConfig

    assert JKOScheduler(num_blocks=4).schedule == s
    assert RunConfig(num_blocks=4).schedule == s
    flow = make_flow(2, 4, block="ode", hidden=(4,), steps=1)
    placed = StepSchedule.from_intervals([b.time_interval for b in jko_steps(flow)])
    assert placed.boundaries == s.boundaries


def test_boundaries_and_the_block_of_each_time():
    s = StepSchedule((0.25, 0.5, 1.0))
    assert s.boundaries == (0.0, 0.25, 0.75, 1.75) and s.total_time == 1.75
    assert s.intervals == ((0.0, 0.25), (0.25, 0.75), (0.75, 1.75))
    assert s.proximal_weights == (2.0, 1.0, 0.5)
    # T_k belongs to block k (the block whose latent-side end it is); 0 to block 1
    times = (0.0, 0.1, 0.25, 0.25 + 1e-12, 0.75, 1.0, 1.75)
    assert [s.block_at(t) for t in times] == [1, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="time axis"):
        s.block_at(1.8)
    with pytest.raises(ValueError, match="time axis"):
        s.block_at(-0.01)


@pytest.mark.parametrize(
    "sizes, match",
    [((), "at least one"), ((0.5, 0.0), "step_sizes\\[1\\] must be finite and > 0"), ("ab", "sequence")],
)
def test_bad_step_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        StepSchedule(sizes)


def test_coerce_accepts_the_owners_and_sequences():
    s = StepSchedule((0.3, 0.5))
    assert StepSchedule.coerce(s) is s
    assert StepSchedule.coerce(JKOScheduler(step_sizes=[0.3, 0.5])) == s
    assert (
        StepSchedule.coerce([0.3, 0.5]) == s
        and StepSchedule.coerce(torch.tensor([0.3, 0.5], dtype=torch.float64)) == s
    )
    with pytest.raises(ValueError, match="StepSchedule, a JKOScheduler or a sequence"):
        StepSchedule.coerce("fast")


def test_float32_intervals_agree_with_the_float64_axis():
    s = StepSchedule((0.3, 0.5, 0.8))
    rounded = StepSchedule.from_intervals(
        [
            (float(torch.tensor(a, dtype=torch.float32)), float(torch.tensor(b, dtype=torch.float32)))
            for a, b in s.intervals
        ]
    )
    assert rounded != s and rounded.agrees_with(s) and s.agrees_with(rounded)
    assert not s.agrees_with(StepSchedule((0.3, 0.5, 0.8 + 10 * FLOAT32_RTOL)))
    assert not s.agrees_with(StepSchedule((0.3, 1.3)))
    with pytest.raises(ValueError, match="block 2 starts at t = 0.4.*consecutive"):
        StepSchedule.from_intervals([(0.0, 0.3), (0.4, 0.9)])


def test_place_puts_every_step_on_its_interval_exactly():
    s = StepSchedule((0.3, 0.5, 0.8))
    blocks = [JKOBlock(2, (4,)).float() for _ in range(3)]
    s.place(blocks)
    assert [b.time_interval for b in blocks] == list(s.intervals)  # float64 even in a float32 block
    blocks[0].half().double()
    assert blocks[0].time_interval == s.intervals[0]
    with pytest.raises(ValueError, match="3 step sizes but there are 2 steps"):
        s.place(blocks[:2])


def test_truncate_extend_refine():
    s = StepSchedule((0.5, 1.0))
    assert s.truncate(1) == StepSchedule((0.5,))
    assert s.extend(1.5) == StepSchedule((0.5, 1.0, 1.5))
    r = s.refine()
    assert r.step_sizes == (0.25, 0.25, 0.5, 0.5) and r.total_time == s.total_time
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        s.truncate(3)


def test_reparametrize_predicts_equal_movement():
    # With speed m_k / h_k constant in each old block, every new block is predicted to move sum(m) / N.
    s = StepSchedule((1.0, 1.0, 2.0))
    movements = [3.0, 1.0, 2.0]
    new = s.reparametrize(movements)
    assert new.total_time == pytest.approx(s.total_time, rel=1e-15)

    def moved(t):  # piecewise-linear accumulated movement of the old schedule
        total, start = 0.0, 0.0
        for h, m in zip(s.step_sizes, movements):
            total += m * min(max(t - start, 0.0), h) / h
            start += h
        return total

    pred = [moved(b) - moved(a) for a, b in new.intervals]
    assert pred == pytest.approx([2.0, 2.0, 2.0], rel=1e-12)
