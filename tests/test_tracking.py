"""The trainer's step callback, TensorBoard scalars, the training figure, and the W2 check of train."""

import math
import warnings

import matplotlib
import pytest
import torch

from jko_plugin import JKOTrainer
from jko_plugin.metrics import checked_wasserstein2
from jko_plugin.plotting import plot_training
from jko_plugin.steps.kinds import make_flow
from jko_plugin.training.history import BlockRecord, TrainingHistory
from jko_plugin.training.tracking import BLOCK_SCALARS, TensorBoardLogger

from .flowcheck import moons


def fit_small(**fit_kw):
    torch.manual_seed(0)
    flow = make_flow(2, 2, block="ode", hidden=(16,), steps=1)
    trainer = JKOTrainer(
        flow, [0.5, 1.0], iterations=7, batch_size=64, lr=4e-3, progress=False, eval_size=100
    )
    return trainer.fit(moons(256), **fit_kw)


def test_on_step_reports_every_iteration_with_its_loss_terms_and_lr():
    events = []
    history = fit_small(on_step=events.append)
    assert [(e.block, e.iteration) for e in events] == [(k, i) for k in (1, 2) for i in range(7)]
    for e in events:
        assert e.loss == pytest.approx(e.potential + e.neg_log_det + e.transport, rel=1e-6)
        # The cosine decay within each block, from lr = 4e-3.
        assert e.lr == pytest.approx(4e-3 * 0.5 * (1 + math.cos(math.pi * e.iteration / 7)), rel=1e-9)
    assert len(history.blocks) == 2
    # The same run without the callback trains the same weights: watching changes nothing.
    again = fit_small()
    assert [b.loss for b in again.blocks] == [b.loss for b in history.blocks]


def test_tensorboard_logger_writes_what_the_trainer_reports(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    with TensorBoardLogger(tmp_path) as log:

        def on_step(e):
            events.append(e)
            log.on_step(e)

        history = fit_small(on_step=on_step, callback=log.on_block)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == list(range(14))
    assert [s.value for s in loss] == pytest.approx([e.loss for e in events], rel=1e-6)
    for name in BLOCK_SCALARS:
        got = acc.Scalars(f"block/{name}")
        assert [s.step for s in got] == [1, 2]
        assert [s.value for s in got] == pytest.approx([getattr(b, name) for b in history.blocks], rel=1e-6)


def record(k, w2, kl):
    return BlockRecord(k, 0.5, 1.0, -0.5, 0.2, 0.7, w2, w2 / 10, kl, 1.5, 1e-4, 1.0, 10)


def test_training_figure_has_the_loss_terms_and_the_decay_on_a_log_scale(tmp_path):
    backend = matplotlib.get_backend()
    history = TrainingHistory([record(1, 0.8, 0.5), record(2, 0.4, -0.01), record(3, 0.2, 0.1)])
    fig = plot_training(history, path=tmp_path / "training.png")
    assert (tmp_path / "training.png").stat().st_size > 0 and matplotlib.get_backend() == backend
    terms, decay = fig.axes
    assert [line.get_label() for line in terms.lines][0] == "JKO loss"
    assert decay.get_yscale() == "log"
    lines = {line.get_label(): line for line in decay.lines}
    assert list(lines["W2 movement"].get_ydata()) == [0.8, 0.4, 0.2]
    # A KL estimate <= 0 (the entropy estimator's bias) has no place on a log scale.
    assert list(lines["KL(rho_k || N(0, I)) est."].get_xdata()) == [1, 3]
    with pytest.raises(ValueError, match="no trained block"):
        plot_training(TrainingHistory())


def test_w2_warning_is_passed_on_only_when_the_figure_is_actually_off(monkeypatch):
    x, y = moons(300, seed=0), moons(300, seed=1)
    exact_ok, note = checked_wasserstein2(x, y, "W2")
    assert note is None
    # A solver that stops early and reports a figure 5% too low: the line says so, once.
    monkeypatch.setattr("jko_plugin.metrics.checked.wasserstein2", lambda a, b: _early(exact_ok * 0.95))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the solver's own warning must not escape
        w2, note = checked_wasserstein2(x, y, "W2 to held-out")
    assert w2 == pytest.approx(exact_ok * 0.95)
    assert note.startswith(f"W2 to held-out {w2:.4f} is approximate") and "off)" in note
    # Stopped early but within 1% of the exact W2: nothing to tell.
    import ot

    cost = torch.cdist(x.double(), y.double()).square()
    exact = (
        float(ot.emd2(torch.full((300,), 1 / 300.0).double(), torch.full((300,), 1 / 300.0).double(), cost))
        ** 0.5
    )
    monkeypatch.setattr("jko_plugin.metrics.checked.wasserstein2", lambda a, b: _early(exact * 1.004))
    assert checked_wasserstein2(x, y, "W2")[1] is None


def _early(value):
    warnings.warn("Sinkhorn stopped after 2000 iterations with a marginal error of 0.1", RuntimeWarning)
    return value
