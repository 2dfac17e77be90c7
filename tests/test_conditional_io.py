"""Conditional models outside the steps: pipeline and save/load, CLI, labelled datasets, the
flow-matching peer, the conditional comparison."""

import math

import normflows as nf
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from jko_plugin.adapters.flow_matching import FlowMatchingModel, fit_flow_matching

from jko_plugin import JKOFlowModel, JKOFlowPipeline, StepSchedule, make_flow, nll
from jko_plugin.cli import main
from jko_plugin.compare import compare_conditional
from jko_plugin.compare.conditional_methods import CONDITIONAL_METHODS
from jko_plugin.compare.methods import Budget
from jko_plugin.datasets import (
    benchmark_mixture,
    conditional_log_prob,
    get_dataset,
    get_labelled,
    load_labelled,
    split_labels,
)
from jko_plugin.steps.kinds import jko_steps
from jko_plugin.steps.normalize import Standardize
from jko_plugin.training.surgery import best_prefix

from .flowcheck import perturb


def conditional_flow(context, *, kinds=("ode", "spline")):
    """A two-step conditional flow (one ODE block, one spline step) with a Standardize layer."""
    steps = []
    for k, kind in enumerate(kinds):
        opts = {"hidden": (8,), "steps": 2} if kind == "ode" else {"hidden": 8}
        steps += make_flow(2, 1, block=kind, schedule=[0.5 + k], **opts, **context).flows[:]
    flow = nf.ConditionalNormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), steps[::-1])
    StepSchedule((0.5, 1.0)).place(steps)  # one after the other on one time axis
    flow.flows.append(Standardize(2, torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.5])))
    perturb(flow, 0.3)
    return flow


@pytest.mark.parametrize(
    "context, key, value",
    [
        ({"num_classes": 3}, "class_labels", torch.tensor([0, 2, 1, 2, 0])),
        ({"context_dim": 2}, "context", torch.randn(5, 2)),
    ],
)
def test_pipeline_samples_conditionally_and_survives_save_load(tmp_path, context, key, value):
    flow = conditional_flow(context)
    pipe = JKOFlowPipeline.from_normflows(flow)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(5, 2)
    out = pipe(latents=z, **{key: value}).samples
    with torch.no_grad():
        torch.testing.assert_close(out, flow.forward(z, value), atol=1e-5, rtol=0)
        x = flow.forward(torch.randn(5, 2), value)
        torch.testing.assert_close(
            pipe.log_prob(x, **{key: value}), flow.log_prob(x, value), atol=1e-5, rtol=0
        )
    pipe.save_pretrained(tmp_path / "pipe")
    again = JKOFlowPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(again(latents=z, **{key: value}).samples, out, atol=0, rtol=0)
    assert again.model.conditioning == pipe.model.conditioning
    rebuilt = again.model.to_normflows()
    assert isinstance(rebuilt, nf.ConditionalNormalizingFlow)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(x, value), flow.log_prob(x, value), atol=1e-5, rtol=0)


def test_model_takes_the_diffusers_keywords_and_refuses_the_wrong_one():
    labelled = JKOFlowModel.from_normflows(conditional_flow({"num_classes": 3}))
    cont = JKOFlowModel.from_normflows(conditional_flow({"context_dim": 2}))
    x = torch.randn(4, 2)
    assert labelled(x, 0.3, class_labels=torch.tensor([0, 1, 2, 0])).sample.shape == (4, 2)
    assert cont(x, 0.3, encoder_hidden_states=torch.randn(4, 2)).sample.shape == (4, 2)
    with pytest.raises(ValueError, match="takes class labels: pass class_labels"):
        labelled(x, 0.3, encoder_hidden_states=torch.randn(4, 2))
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        cont(x, 0.3, class_labels=torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="pass context"):
        labelled(x, 0.3)
    pipe = JKOFlowPipeline.from_normflows(conditional_flow({"num_classes": 3}))
    pipe.set_progress_bar_config(disable=True)
    for kwargs, match in [
        ({"batch_size": 2}, "pass class_labels"),
        ({"class_labels": [0, 3]}, r"outside \[0, 3\)"),
        ({"class_labels": [0, 1], "batch_size": 3}, "batch_size=3 but 2"),
        ({"class_labels": [0, 1], "context": torch.zeros(2, 2)}, "not both"),
        ({"context": torch.zeros(2, 2)}, "pass class_labels"),
    ]:
        with pytest.raises(ValueError, match=match):
            pipe(**kwargs)
    assert pipe(class_labels=1, batch_size=3).samples.shape == (3, 2)
    unconditional = JKOFlowPipeline.from_normflows(make_flow(2, 1, block="ode", hidden=(8,), steps=1))
    with pytest.raises(ValueError, match="takes no context"):
        unconditional(class_labels=[0])


def test_flow_matching_peer_takes_the_same_context():
    torch.manual_seed(0)
    y = torch.arange(2).repeat_interleave(300)
    x = torch.randn(600, 2) * 0.3 + torch.tensor([[2.0, 0.0], [-2.0, 0.0]])[y]
    model = FlowMatchingModel(2, (32, 32), num_classes=2)
    fit_flow_matching(model, x, steps=300, batch_size=128, lr=3e-3, context=y)
    c = torch.tensor([0, 1, 1])
    xs = torch.randn(3, 2)
    torch.testing.assert_close(model(xs, 500.0, class_labels=c).sample, model.velocity(xs, 0.5, c))
    for label, centre in ((0, 2.0), (1, -2.0)):
        s = model.sample(
            400, steps=16, context=torch.full((400,), label), generator=torch.Generator().manual_seed(1)
        )
        assert float(s[:, 0].mean()) == pytest.approx(centre, abs=0.3)
    pipe = JKOFlowPipeline(model=model, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    assert float(pipe(class_labels=1, batch_size=300, num_inference_steps=16).samples[:, 0].mean()) < -1.5
    assert model.log_prob(x[:10], steps=8, context=y[:10]).shape == (10,)
    with pytest.raises(ValueError, match="pass context"):
        model.sample(3)
    with pytest.raises(ValueError, match="coupling='ot'"):
        fit_flow_matching(model, x, steps=1, coupling="ot", context=y)


def test_nll_takes_a_context():
    flow = conditional_flow({"num_classes": 2})
    x, y = torch.randn(10, 2), torch.arange(10) % 2
    with torch.no_grad():
        assert nll(flow, x, context=y, batch_size=3) == pytest.approx(
            float(-flow.log_prob(x, y).mean()), rel=1e-6
        )
    with pytest.raises(ValueError, match="context has 4 rows"):
        nll(flow, x, context=y[:4])


PRIORS = {
    "moons": torch.full((2,), 0.5, dtype=torch.float64),
    "8gaussians": torch.full((8,), 0.125, dtype=torch.float64),
    "gmm4": benchmark_mixture(4).weights,
}


def test_labelled_datasets_match_the_unlabelled_ones_and_their_densities():
    for name in ("moons", "8gaussians", "gmm4"):
        ds = get_labelled(name)
        x, y = load_labelled(name, 2000, seed=3)
        assert torch.equal(x, get_dataset(name).sample(2000, seed=3))
        assert y.dtype == torch.long and 0 <= int(y.min()) and int(y.max()) < ds.num_classes
        # the mixture of the conditionals with the class frequencies is the marginal density
        logs = torch.stack(
            [conditional_log_prob(name, x, torch.full((len(x),), k)) for k in range(ds.num_classes)], 1
        ).double()
        prior = PRIORS[name]
        assert torch.bincount(y, minlength=ds.num_classes) / 2000 == pytest.approx(prior, abs=0.04)
        mixture = torch.logsumexp(logs + prior.log(), dim=1)
        torch.testing.assert_close(mixture, get_dataset(name).log_prob(x).double(), atol=1e-5, rtol=0)
        # the Bayes classifier is p(k | x) from the same densities and priors
        torch.testing.assert_close(ds.posterior(x), torch.softmax(logs + prior.log(), 1), atol=1e-6, rtol=0)
    # p(x | moon) integrates to one over the plane
    g = torch.linspace(-2.2, 2.2, 89, dtype=torch.float64)  # the moons' support, step ~ the noise (0.05)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for moon in (0, 1):
        mass = (
            conditional_log_prob("moons", grid, torch.full((len(grid),), moon)).exp().sum()
            * (g[1] - g[0]) ** 2
        )
        assert float(mass) == pytest.approx(1.0, abs=1e-3)
    x, y = load_labelled("digits", None, seed=0)
    assert x.shape == (1797, 64) and torch.bincount(y).tolist()[0] == 178
    with pytest.raises(ValueError, match="labelled dataset must be one of"):
        get_labelled("circles")
    with pytest.raises(ValueError, match="not known"):
        conditional_log_prob("digits", x[:2], y[:2])


def test_split_labels():
    data = torch.tensor([[0.5, 2.0, 1.0], [0.7, 0.0, 3.0]], dtype=torch.float64)
    x, y = split_labels(data, 1)
    assert x.tolist() == [[0.5, 1.0], [0.7, 3.0]] and y.tolist() == [2, 0]
    for column, match in ((3, r"in \[-3, 2\]"), (0, r"whole numbers >= 0 \(class 0, 1, ...\), got 0.5")):
        with pytest.raises(ValueError, match=match):
            split_labels(data, column)
    with pytest.raises(ValueError, match="nothing is left"):
        split_labels(torch.tensor([[1.0], [0.0]]), 0)


def test_cli_train_with_labels_then_sample_a_class(tmp_path, capsys):
    x, y = load_labelled("moons", 1200, seed=0)
    np.savetxt(tmp_path / "pts.csv", np.c_[y.numpy(), x.numpy()], delimiter=",", header="label,a,b")
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "pts.csv"), "--label-column", "0", "--out", str(out)]
    assert main(args + ["--blocks", "1", "--iterations", "30", "--batch-size", "256", "--quiet"]) == 0
    assert "test NLL" in capsys.readouterr().out
    pipe = JKOFlowPipeline.from_pretrained(out / "model")
    assert pipe.model.conditioning == {"num_classes": 2}
    for label in (0, 1):
        assert (
            main(
                [
                    "sample",
                    "--model",
                    str(out / "model"),
                    "-n",
                    "400",
                    "--class",
                    str(label),
                    "--out",
                    str(tmp_path / f"s{label}.npy"),
                ]
            )
            == 0
        )
    s0, s1 = np.load(tmp_path / "s0.npy"), np.load(tmp_path / "s1.npy")
    assert s0.shape == (400, 2)
    # the outer moon (label 0) lies above the inner one
    assert s0[:, 1].mean() > s1[:, 1].mean() + 0.3
    capsys.readouterr()
    assert main(["sample", "--model", str(out / "model"), "-n", "4", "--out", str(tmp_path / "s.npy")]) == 2
    assert "pass --class" in capsys.readouterr().err
    assert (
        main(
            [
                "sample",
                "--model",
                str(out / "model"),
                "-n",
                "4",
                "--class",
                "2",
                "--out",
                str(tmp_path / "s.npy"),
            ]
        )
        == 2
    )
    assert "--class must lie in [0, 1]" in capsys.readouterr().err
    bad = ["train", "--data", str(tmp_path / "pts.csv"), "--label-column", "1", "--out", str(tmp_path / "r2")]
    assert main(bad + ["--quiet"]) == 2
    assert "whole numbers" in capsys.readouterr().err


def test_conditional_comparison_scores_every_method(tmp_path):
    records = compare_conditional(
        "moons", "jko-spline,cfm", steps=16, num_train=600, num_test=300, w2_points=100, out=tmp_path
    )
    assert [r["method"] for r in records] == ["jko-spline", "cfm"]
    for r in records:
        assert math.isfinite(r["test_nll"]) and r["true_nll"] == pytest.approx(records[0]["true_nll"])
        assert set(r["w2_per_class"]) == {0, 1} and r["w2"] > r["w2_floor"] > 0
        assert 0 <= r["label_accuracy"] <= 1 and r["data_label_accuracy"] > 0.99
    assert "cond. NLL" in (tmp_path / "table.md").read_text()
    # a classifier of the user's own replaces the Bayes classifier: "always class 0" is right on half
    (always_zero,) = compare_conditional(
        "moons",
        "jko-spline",
        steps=4,
        num_train=300,
        num_test=100,
        w2_points=20,
        label_samples=30,
        classifier=lambda x, y: lambda s: torch.zeros(len(s), dtype=torch.long),
    )
    assert always_zero["label_accuracy"] == always_zero["data_label_accuracy"] == 0.5
    assert always_zero["label_accuracy_per_class"] == {0: 1.0, 1: 0.0}
    with pytest.raises(ValueError, match="take a context"):
        compare_conditional("moons", "nsf", steps=2)
    with pytest.raises(ValueError, match="--labels K"):
        compare_conditional(tmp_path / "x.csv", "cfm", steps=2)


def test_conditional_methods_choose_on_training_rows_only():
    """Steps, iterates and checkpoints are chosen on rows held out of the training pairs: the
    held-out pairs (here NaN) play no part, and the JKO flow is cut after its best step on them."""
    x, y = load_labelled("8gaussians", 400, seed=0)
    x_test, y_test = load_labelled("8gaussians", 50, seed=1)
    probe = x_test[:20]
    for name in ("jko-spline", "cfm"):
        method = CONDITIONAL_METHODS[name]
        models = [
            method.train(x, y, held_out, y_test, 8, Budget(steps=12), seed=0)
            for held_out in (x_test, torch.full_like(x_test, float("nan")))
        ]
        first, second = (m.log_prob(probe, y_test[:20]) for m in models)
        assert torch.isfinite(first).all() and torch.equal(first, second)
        assert models[0].details["validation_points"] == 40  # 10% of the 400 training pairs
    jko = CONDITIONAL_METHODS["jko-spline"].train(x, y, x_test, y_test, 8, Budget(steps=12), seed=0)
    kept = jko.details["kept_steps"]
    assert kept == best_prefix(jko.details["validation_nll_per_block"])
    assert len(jko_steps(jko.module)) == kept <= jko.details["num_blocks"]


def test_cli_compare_on_a_labelled_file(tmp_path, capsys):
    x, y = load_labelled("8gaussians", 500, seed=0)
    np.savetxt(tmp_path / "pts.csv", np.c_[x.numpy(), y.numpy()], delimiter=",")
    out = tmp_path / "cmp"
    args = ["compare", "--dataset", str(tmp_path / "pts.csv"), "--labels", "-1", "--methods", "jko-spline"]
    assert main(args + ["--steps", "4", "--num-train", "400", "--num-test", "100", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "8 classes), conditional" in table and "| jko-spline |" in table
    assert main(args + ["--steps", "4", "--seeds", "0,1", "--out", str(out)]) == 2
    assert "one --seed" in capsys.readouterr().err
    assert main(args + ["--steps", "4", "--compile", "--out", str(out)]) == 2
    assert "no --compile" in capsys.readouterr().err
