"""The peers' checkpoint selection: fit_budgeted's validate/checks and the comparison's peers, which
hold out the JKO rows' validation split and keep their best checkpoint on it."""

import math

import pytest
import torch
from jko_plugin.adapters.budget import TrainingBudget, fit_budgeted, lr_factor
from jko_plugin.adapters.flow_matching import FlowMatchingModel, fit_flow_matching, validation_loss
from jko_plugin.adapters.normflows_baselines import fit_maximum_likelihood, make_baseline

from .flowcheck import moons


class Scalar(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def pulled_to_ten(model):
    return lambda: (model.w - 10.0).square()


def test_the_state_with_the_best_validation_score_is_restored():
    model, seen = Scalar(), {}

    def validate():
        assert not torch.is_grad_enabled() and not model.training
        seen[len(seen)] = float(model.w.detach())
        return (float(model.w.detach()) - 3.0) ** 2

    history = fit_budgeted(
        model,
        pulled_to_ten(model),
        TrainingBudget(steps=100),
        lr=0.1,
        lr_schedule="constant",
        validate=validate,
    )
    # Checks where progress crosses k/20: every 5 steps, the last one at the end.
    assert [s for s, _ in history.validation] == list(range(5, 101, 5))
    scores = [v for _, v in history.validation]
    k = scores.index(min(scores))
    assert history.best_step == history.validation[k][0] and 0 < k < len(scores) - 1
    # Adam moves w by at most lr = 0.1 a step: checks 0.5 apart; the run ends far past 3.
    assert float(model.w.detach()) == seen[k] and abs(float(model.w.detach()) - 3.0) <= 0.25
    assert seen[len(seen) - 1] > 6.0 and not model.training
    assert history.to_dict()["best_step"] == history.best_step
    assert history.to_dict()["validation"] == [list(p) for p in history.validation]


def test_checks_fall_where_the_budget_crosses_each_fraction_and_at_the_end():
    model = Scalar()
    history = fit_budgeted(
        model, pulled_to_ten(model), TrainingBudget(steps=7), lr=0.1, checks=3, validate=lambda: 0.0
    )
    assert [s for s, _ in history.validation] == [3, 5, 7]  # 3/7 >= 1/3, 5/7 >= 2/3, 7/7
    # A time budget: whatever the crossings, the last check is the last step, none twice.
    model = Scalar()
    history = fit_budgeted(
        model, pulled_to_ten(model), TrainingBudget(seconds=0.05), lr=0.1, checks=4, validate=lambda: 0.0
    )
    steps = [s for s, _ in history.validation]
    assert steps[-1] == history.steps and steps == sorted(set(steps)) and len(steps) <= 5
    with pytest.raises(ValueError, match="checks"):
        fit_budgeted(model, pulled_to_ten(model), TrainingBudget(steps=2), lr=0.1, checks=0)


def _mlp_run(validate=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=gen)

    def batch_loss():
        xb = x[torch.randint(0, 64, (16,), generator=gen)]
        return (net(xb).squeeze(-1) - xb.sum(-1)).square().mean()

    history = fit_budgeted(net, batch_loss, TrainingBudget(steps=15), lr=0.05, validate=validate)
    return net, history, x


def test_without_validate_training_is_the_plain_adam_loop():
    net, history, _ = _mlp_run()
    again, _, _ = _mlp_run()
    assert history.validation == [] and history.best_step is None
    assert history.to_dict()["validation"] == [] and history.to_dict()["best_step"] is None
    # The loop as it was before selection: Adam, cosine decay of the learning rate over 15 steps.
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, generator=gen)
    opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    for step in range(15):
        for group in opt.param_groups:
            group["lr"] = 0.05 * lr_factor("cosine", step / 15)
        xb = x[torch.randint(0, 64, (16,), generator=gen)]
        opt.zero_grad()
        (ref(xb).squeeze(-1) - xb.sum(-1)).square().mean().backward()
        opt.step()
    for a, b, c in zip(net.parameters(), again.parameters(), ref.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    # Scores that are never finite: checked, never kept, and the trained state stays as it is.
    kept, history, _ = _mlp_run(validate=lambda: math.inf)
    assert len(history.validation) == 15 and history.best_step is None
    for a, b in zip(net.parameters(), kept.parameters()):
        assert torch.equal(a, b)


def test_non_finite_scores_are_never_chosen():
    model, seen = Scalar(), []
    scores = iter([3.0, math.nan, -math.inf, 1.0, math.inf, 2.0])

    def validate():
        seen.append(float(model.w.detach()))
        return next(scores)

    history = fit_budgeted(
        model, pulled_to_ten(model), TrainingBudget(steps=6), lr=0.1, checks=6, validate=validate
    )
    assert history.best_step == 4 and float(model.w.detach()) == seen[3] != seen[-1]
    assert math.isnan(history.validation[1][1]) and history.validation[2][1] == -math.inf


# Learning rates at which these seeded runs end past their best validation score, so that the
# recomputed score below checks the restored state, not the last one.
@pytest.mark.parametrize("name,lr", [("nsf", 2e-2), ("realnvp", 5e-2)])
def test_maximum_likelihood_keeps_the_best_validation_nll(name, lr):
    torch.manual_seed(0)
    flow = make_baseline(name, 2, num_layers=2, hidden=8).double()
    x, x_val = moons(256, seed=0).double(), moons(40, seed=1).double()
    history = fit_maximum_likelihood(
        flow, x, steps=12, batch_size=64, lr=lr, lr_schedule="constant", x_val=x_val
    )
    assert [s for s, _ in history.validation] == list(range(1, 13)) and history.steps == 12
    best = min(v for _, v in history.validation)
    assert (history.best_step, best) in history.validation and history.best_step < 12
    with torch.no_grad():
        nll = float(-flow.log_prob(x_val).mean())
    assert nll == pytest.approx(best, abs=1e-5)
    with pytest.raises(ValueError, match=r"x_val must have shape \(m, 2\)"):
        fit_maximum_likelihood(flow, x, steps=1, x_val=x_val[:, :1])


def test_flow_matching_keeps_the_best_fixed_draw_validation_loss():
    torch.manual_seed(0)
    model = FlowMatchingModel(2, hidden=(16, 16)).double()
    x, x_val = moons(256, seed=0).double(), moons(40, seed=1).double()
    history = fit_flow_matching(
        model, x, steps=10, batch_size=8, lr=0.1, lr_schedule="constant", seed=5, x_val=x_val
    )
    assert len(history.validation) == 10
    best = min(v for _, v in history.validation)
    assert (history.best_step, best) in history.validation and history.best_step < 10
    assert validation_loss(model, x_val, seed=5) == pytest.approx(best, abs=1e-10)
    assert validation_loss(model, x_val, seed=5) != validation_loss(model, x_val, seed=6)  # seeded draws
    # A conditional model scores its validation rows with their labels.
    torch.manual_seed(0)
    cond = FlowMatchingModel(2, hidden=(8,), num_classes=2).double()
    labels, labels_val = (x[:, 0] > 0).long(), (x_val[:, 0] > 0).long()
    history = fit_flow_matching(
        cond, x, steps=4, batch_size=64, context=labels, x_val=x_val, context_val=labels_val
    )
    best = min(v for _, v in history.validation)
    assert validation_loss(cond, x_val, seed=0, context=labels_val) == pytest.approx(best, abs=1e-10)
    with pytest.raises(ValueError, match="context"):
        fit_flow_matching(cond, x, steps=1, context=labels, x_val=x_val)


@pytest.mark.parametrize("library", ["torchcfm", "flow_matching"])
def test_library_peers_keep_the_best_fixed_draw_validation_loss(library):
    pytest.importorskip(library)
    from jko_plugin.adapters import peers

    fit = peers.fit_torchcfm if library == "torchcfm" else peers.fit_flow_matching_lib
    torch.manual_seed(0)
    model = FlowMatchingModel(2, hidden=(16, 16)).double()
    x, x_val = moons(256, seed=0).double(), moons(40, seed=1).double()
    history = fit(model, x, steps=6, batch_size=8, lr=0.1, seed=2, x_val=x_val)
    best = min(v for _, v in history.validation)
    assert len(history.validation) == 6 and history.best_step < 6
    assert validation_loss(model, x_val, seed=2) == pytest.approx(best, abs=1e-10)


def test_compare_peers_select_on_the_jko_rows_validation_split(monkeypatch):
    import jko_plugin.adapters.flow_matching as fm
    import jko_plugin.adapters.normflows_baselines as nb

    import jko_plugin.compare.selection as choosing
    from jko_plugin.compare import compare

    splits, fitted = [], {}
    split = choosing.validation_split

    def recording_split(x, seed, context=None):
        out = split(x, seed, context)
        splits.append(out[1])
        return out

    def recording(name, fit):
        def wrapped(model, x, **kw):
            fitted[name] = (x, kw["x_val"])
            return fit(model, x, **kw)

        return wrapped

    monkeypatch.setattr(choosing, "validation_split", recording_split)
    monkeypatch.setattr(fm, "fit_flow_matching", recording("cfm", fm.fit_flow_matching))
    monkeypatch.setattr(nb, "fit_maximum_likelihood", recording("realnvp", nb.fit_maximum_likelihood))
    records = compare(
        "moons", "jko-spline,cfm,realnvp", steps=20, num_train=300, num_test=100, num_samples=200
    )
    by = {r["method"]: r for r in records}
    assert len(splits) == 3 and all(torch.equal(s, splits[0]) for s in splits)
    for m, selection in (("cfm", "validation flow-matching loss"), ("realnvp", "validation NLL")):
        d = by[m]["details"]
        assert d["validation_points"] == by["jko-spline"]["details"]["validation_points"] == 30
        assert d["selection"] == selection and 1 <= d["best_step"] <= 20
        assert by[m]["train_steps"] == 20
        x_fit, x_sel = fitted[m]
        assert torch.equal(x_sel, splits[0]) and x_fit.shape[0] == 270  # 300 - 10%
