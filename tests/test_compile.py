"""``TrainerOptions(compile=True)``: steps trained through ``torch.compile`` train the same model.

The tests give ``torch.compile`` a backend that records each captured graph and runs it as
captured (no C++ build, so they stay fast); the inductor backend users get is timed in
``benchmarks/bench_compile.py`` and, at equal time, ``benchmarks/bench_jko_recipes.py``
(``*-compiled-checks``).
"""

import time

import pytest
import torch

import jko_plugin.training.step_fit as step_fit
from jko_plugin import JKOTrainer, make_flow
from jko_plugin.cli import _overrides, build_parser
from jko_plugin.compare import compare
from jko_plugin.run_config import default_config
from jko_plugin.workflows import make_trainer

from .flowcheck import RevisingPlan, moons


@pytest.fixture
def graphs(monkeypatch):
    """The graphs ``torch.compile`` captures while the test runs (a fresh dynamo cache)."""
    seen = []

    def backend(gm, example_inputs):
        seen.append(gm)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(step_fit, "COMPILE_BACKEND", backend)
    yield seen
    torch._dynamo.reset()


def _train(block, compile, **kw):
    torch.manual_seed(0)
    flow = make_flow(2, 2, block=block, **kw)
    x = moons(600)
    options = dict(iterations=15, batch_size=128, lr=5e-3, progress=False, compile=compile)
    trainer = JKOTrainer(flow, [0.5, 1.0], **options)
    history = trainer.fit(x[:500], x[500:])
    return flow, history


def test_compiled_spline_steps_train_the_eager_model_in_one_shared_graph(graphs):
    eager, eager_history = _train("spline", False, layers=1, hidden=8, bins=4)
    assert graphs == []
    compiled, history = _train("spline", True, layers=1, hidden=8, bins=4)
    # One graph, no break (the finiteness check stays out of it), shared by both steps.
    assert len(graphs) == 1
    assert [b.nll for b in history.blocks] == pytest.approx([b.nll for b in eager_history.blocks], abs=1e-5)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("density", ["map", "ode"])
def test_compiled_ode_blocks_train_the_eager_model(graphs, density):
    options = dict(hidden=(8,), steps=1, density=density, trace="hutchinson")
    _, eager_history = _train("ode", False, **options)
    _, history = _train("ode", True, **options)
    assert graphs  # the interval is read as tensors: no .item() to send dynamo back to eager
    assert [b.nll for b in history.blocks] == pytest.approx([b.nll for b in eager_history.blocks], abs=1e-5)


def test_a_time_budget_rates_a_block_without_its_first_iteration(monkeypatch):
    # The first iteration compiles (tens of seconds): the rate that plans the rest of the block
    # is measured on the iterations after it, scaled to the probe's count.
    update, calls = step_fit.StepFitter.update, []

    def slow_first(self, *args):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.0)
        return update(self, *args)

    monkeypatch.setattr(step_fit.StepFitter, "update", slow_first)
    flow = make_flow(2, 1, block="spline", layers=1, hidden=8)
    plan = RevisingPlan(40, 40)
    JKOTrainer(flow, [0.5], batch_size=128, progress=False).fit(moons(400), plan=plan)
    ((done, seconds),) = plan.asked
    assert done == 20
    assert 0 < seconds < 1.0


def test_compile_flag_reaches_the_trainer_and_compare_rows(graphs, tmp_path):
    args = build_parser().parse_args(["train", "--data", "x.npy", "--out", "o", "--compile"])
    config = default_config("spline", **_overrides(args))
    assert config.compile
    flow = make_flow(2, config.num_blocks, block="spline")
    assert make_trainer(config, flow, 1000).options.compile
    plain = build_parser().parse_args(["train", "--data", "x.npy", "--out", "o"])
    assert not default_config("spline", **_overrides(plain)).compile

    sizes = dict(num_train=300, num_test=100, num_samples=200, w2_points=100)
    records = compare("moons", "jko-spline,cfm", steps=8, compile=True, **sizes)
    by = {r["method"]: r for r in records}
    assert by["jko-spline"]["details"]["compiled"] is True
    assert "compiled" not in by["cfm"]["details"]
    assert len(graphs) >= 1


def test_compile_without_a_cpp_compiler_is_one_clear_error(monkeypatch):
    from torch._inductor import cpp_builder

    def missing():
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    monkeypatch.setattr(step_fit, "_COMPILED", {})
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        _train("spline", True, layers=1, hidden=8, bins=4)
