import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from jko_plugin.compare import DEFAULT_METHODS, METHODS, add_arguments, compare, format_table, run
from jko_plugin.datasets import get_dataset
from jko_plugin.metrics import wasserstein2

from .flowcheck import spline_bins

NAMES = DEFAULT_METHODS.split(",")
KEYS = ("method", "test_nll", "w2", "w2_floor", "mmd", "train_seconds", "params", "nfe", "sample_seconds")
TIMINGS = ("train_seconds", "sample_seconds", "fast_sample_seconds", "details")
SMALL = dict(num_train=600, num_test=200, num_samples=1000, seed=3)
TINY = dict(num_train=300, num_test=100, num_samples=200, w2_points=100)


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, compare("moons", DEFAULT_METHODS, steps=12, out=out, **SMALL)


def _stable(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def test_end_to_end_writes_all_outputs(moons_run):
    out, records = moons_run
    assert [r["method"] for r in records] == NAMES
    saved = json.loads((out / "results.json").read_text())
    assert isinstance(saved, list) and [r["method"] for r in saved] == NAMES
    for r in saved:
        for key in KEYS:
            assert key in r, key
        assert np.isfinite(r["test_nll"]) and r["w2"] > 0 and r["mmd"] >= 0
        assert r["train_seconds"] > 0 and r["sample_seconds"] > 0
    table = (out / "table.md").read_text()
    for m in NAMES:
        assert f"| {m} |" in table
    png = (out / "samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_reference_values(moons_run):
    _, records = moons_run
    ds = get_dataset("moons")
    x_train, x_test = ds.sample(600, seed=3), ds.sample(200, seed=4)
    true_nll = float(-ds.log_prob(x_test).double().mean())
    floor = wasserstein2(x_train[:200], x_test[:200])
    by = {r["method"]: r for r in records}
    for r in records:
        assert r["true_nll"] == pytest.approx(true_nll, rel=1e-12)
        assert r["nll_gap"] == pytest.approx(r["test_nll"] - true_nll, rel=1e-12)
        assert r["w2_floor"] == pytest.approx(floor, rel=1e-12)
        assert r["w2_points"] == 200
    # Same number of gradient steps: 12 for the peers, 12 // blocks per JKO block.
    assert by["jko"]["train_steps"] == 12 and by["jko"]["details"]["iterations_per_block"] == [2] * 6
    assert (
        by["jko-spline"]["train_steps"] == 12
        and by["jko-spline"]["details"]["iterations_per_block"] == [3] * 4
    )
    for m in ("cfm", "otcfm", "realnvp", "nsf"):
        assert by[m]["train_steps"] == 12
    # NFE: 12 RK4 steps; 8 coupling layers; 8 layers x d passes.
    # ODE blocks in 2-D sample the trained map (density="auto"): the reverse solve, up to 2 Newton
    # steps and the log-det pass, each 3 RK4 steps x 4 stages per block.
    # A JKO row keeps the steps up to its best validation NLL (a split of its training points).
    kept = {m: by[m]["details"]["kept_steps"] for m in ("jko", "jko-spline")}
    assert 1 <= kept["jko"] <= 6 and 1 <= kept["jko-spline"] <= 4
    assert by["jko"]["details"]["validation_points"] == 60  # 10% of 600
    val = by["jko"]["details"]["validation_nll_per_block"]
    assert min(val) == val[kept["jko"] - 1]
    assert [by[m]["nfe"] for m in NAMES] == [48 * kept["jko"], 4 * kept["jko-spline"], 48, 48, 8, 16]
    assert by["cfm"]["params"] == by["otcfm"]["params"]


def test_same_seed_same_numbers(moons_run):
    _, records = moons_run
    again = compare("moons", DEFAULT_METHODS, steps=12, **SMALL)
    assert _stable(again) == _stable(records)


def test_user_npy_file_and_cli(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(500, 3, generator=gen) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.2], [0.0, 0.0, 0.5]]
    )
    path = tmp_path / "mine.npy"
    np.save(path, data.numpy())
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--dataset",
            str(path),
            "--methods",
            "cfm,realnvp",
            "--steps",
            "5",
            "--num-test",
            "100",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert run(args) == 0
    records = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["method"] for r in records] == ["cfm", "realnvp"]
    for r in records:
        assert r["dataset"] == "mine.npy" and r["dim"] == 3
        assert (r["num_train"], r["num_test"]) == (400, 100)  # 80 / 20 split
        assert r["true_nll"] is None and r["nll_gap"] is None
    assert "| realnvp |" in capsys.readouterr().out


def test_time_budget_is_respected(tmp_path):
    records = compare("moons", "jko,cfm", budget_seconds=2.0, num_train=600, num_test=200, num_samples=500)
    by = {r["method"]: r for r in records}
    assert 2.0 <= by["cfm"]["train_seconds"] < 3.0
    # JKO: calibration + blocks, fitted to the budget from timed runs (loose: a shared machine).
    assert 0.7 < by["jko"]["train_seconds"] < 5.0
    assert by["jko"]["details"]["calibration_seconds"] < by["jko"]["train_seconds"]


def test_unknown_method_or_dataset():
    with pytest.raises(
        ValueError,
        match=r"methods must be among \['jko', 'jko-spline', 'jko-coupling', 'jko-spline-64', 'jko-grid', "
        r"'jko-mixture', 'cfm', 'otcfm', 'realnvp', 'nsf', .*got 'glow'",
    ):
        compare("moons", "jko,glow", steps=1)
    with pytest.raises(ValueError, match=r"dataset must be one of .*'moons'.*got 'mnist'"):
        compare("mnist", "cfm", steps=1)
    with pytest.raises(ValueError, match="exactly one of budget_seconds and steps"):
        compare("moons", "cfm")
    with pytest.raises(ValueError, match="exactly one of budget_seconds and steps"):
        compare("moons", "cfm", steps=3, budget_seconds=1.0)
    with pytest.raises(FileNotFoundError):
        compare("/nonexistent/data.npy", "cfm", steps=1)


def test_format_table_leaves_unknown_gap_out():
    rec = {k: 1.0 for k in KEYS} | {
        "method": "cfm",
        "params": 10,
        "nfe": 48,
        "nll_gap": None,
        "train_steps": 5,
    }
    table = format_table([rec])
    assert "gap to true" not in table
    assert table.splitlines()[2].startswith("| cfm | 1.000 |")


def test_maf_benchmark_from_local_files(tmp_path):
    # MINIBOONE's format: one data.npy; MAF's split keeps the last 10% as the test set.
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", np.random.default_rng(0).normal(size=(1000, 4)))
    records = compare("miniboone", "realnvp", steps=2, maf_root=tmp_path, num_samples=200)
    assert (records[0]["num_train"], records[0]["num_test"], records[0]["dim"]) == (810, 100, 4)
    with pytest.raises(ValueError, match=r"with maf_root, dataset must be one of \['bsds300', 'gas'"):
        compare("moons", "realnvp", steps=2, maf_root=tmp_path)
    with pytest.raises(FileNotFoundError, match="MAF data directory"):
        compare("power", "realnvp", steps=2, maf_root=tmp_path / "nowhere")


def test_diverged_model_is_recorded_not_dropped(monkeypatch):
    import jko_plugin.compare.runner as cmp

    def broken(model, x, **kw):
        raise ValueError("the model's log_prob is not finite on x (mean NLL nan)")

    monkeypatch.setattr(cmp, "nll", broken)
    (rec,) = compare("moons", "realnvp", steps=2, num_train=300, num_test=100, num_samples=200)
    assert rec["test_nll"] is None and rec["nll_gap"] is None
    assert rec["errors"] == ["test_nll: the model's log_prob is not finite on x (mean NLL nan)"]
    assert rec["w2"] > 0
    assert format_table([rec]).splitlines()[2].startswith("| realnvp | - |")


def test_ode_jko_scores_and_samples_one_map():
    assert METHODS["jko"].config(3, 0).trace == "exact"
    assert METHODS["jko"].config(4, 0).trace == "hutchinson"  # used where the density is the ODE's
    # Above d = 3: the ODE's density at 8 RK4 steps per block, samples from the same 8-step
    # solver, and the trained sampler (RunConfig.steps RK4 steps) reported beside it, with the gap
    # between the two densities.
    trained_steps = METHODS["jko"].config(4, 0).steps
    assert trained_steps == 3
    (rec,) = compare("gmm4", "jko", steps=6, num_train=300, num_test=100, num_samples=200)
    assert rec["details"]["density"] == "ODE divergence" and rec["details"]["trace"] == "hutchinson"
    kept = rec["details"]["kept_steps"]
    assert rec["nfe"] == kept * 8 * 4 and rec["fast_nfe"] == kept * trained_steps * 4
    assert rec["fast_w2"] > 0 and abs(rec["details"]["solver_gap"]) < 0.5
    (again,) = compare("gmm4", "jko", steps=6, num_train=300, num_test=100, num_samples=200)
    assert np.isfinite(rec["test_nll"]) and rec["test_nll"] == again["test_nll"]
    # Up to d = 3 (density="auto"): the exact density of the trained map, trained, scored and
    # sampled on it (Newton's inverse), with the exact trace: no second sampler, no gap.
    (rec,) = compare("gmm3", "jko", steps=6, num_train=300, num_test=100, num_samples=200)
    assert rec["details"]["density"].startswith("exact map") and rec["details"]["trace"] == "exact"
    assert rec["fast_w2"] is None and "solver_gap" not in rec["details"]
    # reverse solve, <= 2 Newton steps and the log-det pass, each steps x 4 stages
    assert rec["nfe"] == rec["details"]["kept_steps"] * (2 + 2) * trained_steps * 4


def test_seeds_give_the_median_and_spread_per_method(tmp_path):
    from jko_plugin.compare import compare_seeds

    summary = compare_seeds("moons", "cfm,realnvp", seeds=[0, 1, 2], steps=4, out=tmp_path, **TINY)
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [s["method"] for s in summary] == ["cfm", "realnvp"]
    for i, s in enumerate(summary):
        values = sorted(run[i]["test_nll"] for run in runs)
        assert s["test_nll"] == {"median": values[1], "min": values[0], "max": values[2], "runs": 3}
        assert s["seeds"] == [0, 1, 2]
    assert (tmp_path / "seed1" / "table.md").exists()
    table = (tmp_path / "table.md").read_text()
    assert (
        "median (min .. max) over seeds [0, 1, 2]" in table
        and f"{summary[0]['test_nll']['median']:.3f} (" in table
    )
    with pytest.raises(ValueError, match="distinct"):
        compare_seeds("moons", "cfm", seeds=[1, 1], steps=2, **TINY)


def test_cli_seeds_and_no_standardize(tmp_path, capsys):
    from jko_plugin.cli import main

    code = main(
        [
            "compare",
            "--dataset",
            "moons",
            "--methods",
            "cfm",
            "--steps",
            "3",
            "--seeds",
            "0,1",
            "--out",
            str(tmp_path),
        ]
        + ["--num-train", "300", "--num-test", "100", "--no-standardize"]
    )
    assert code == 0 and (tmp_path / "seed0" / "results.json").exists()
    rec = json.loads((tmp_path / "seed0" / "results.json").read_text())[0]
    assert rec["standardized"] is False
    assert (
        main(["compare", "--dataset", "moons", "--seeds", "0,x", "--steps", "2", "--out", str(tmp_path)]) == 2
    )
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err


def test_an_unconverged_w2_is_one_note_in_the_record_not_the_solvers_warning(monkeypatch):
    import warnings

    import jko_plugin.metrics.checked as w

    exact = w.wasserstein2

    def stopped_early(x, y, **kwargs):  # a solver that gave up 10% above the true value
        warnings.warn("Sinkhorn stopped after 2000 iterations", RuntimeWarning, stacklevel=2)
        return 1.1 * exact(x, y, **kwargs)

    monkeypatch.setattr(w, "wasserstein2", stopped_early)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (rec,) = compare("moons", "cfm", steps=2, **TINY)
    assert not [m for m in caught if "Sinkhorn stopped" in str(m.message)]
    assert len(rec["warnings"]) == 2  # the method's W2 and the floor, each with the exact figure
    assert rec["warnings"][0].startswith("cfm's W2") and "exact W2 of these points" in rec["warnings"][0]
    assert rec["warnings"][1].startswith("the data-vs-data W2 floor")


def test_finer_spline_method_is_the_spline_row_with_64_bins_a_front_loaded_budget_and_a_narrow_step_one():
    from jko_plugin.workflows import build_flow

    fine, plain = METHODS["jko-spline-64"].config(2, 3), METHODS["jko-spline"].config(2, 3)
    assert spline_bins(build_flow(fine, 2)) == {64} and spline_bins(build_flow(plain, 2)) == {16}
    assert fine.budget_weights == (3.0, 1.0, 1.0, 1.0) and plain.budget_weights == (1.0, 1.0, 1.0, 1.0)
    assert fine.first_step_options() == {"tail_bound": 3.0} and plain.first_step_options() == {}
    unchanged = dict(spline_bins=None, first_share=plain.first_share, first_tail_bound=None)
    assert dataclasses.replace(fine, **unchanged) == plain
    assert "jko-spline-64" not in DEFAULT_METHODS.split(",")


def test_default_training_size_is_the_datasets(monkeypatch):
    from jko_plugin.datasets import DATASETS, DEFAULT_TRAIN_SIZE

    # rose and tree train on JKO-iFlow's 500,000 points (its configs' ntr); the rest on 20,000.
    assert [get_dataset(n).train_size for n in ("rose", "tree", "moons", "gmm16")] == [
        500_000,
        500_000,
        DEFAULT_TRAIN_SIZE,
        DEFAULT_TRAIN_SIZE,
    ]
    monkeypatch.setitem(DATASETS, "moons", dataclasses.replace(DATASETS["moons"], train_size=240))
    (rec,) = compare("moons", "cfm", steps=2, num_test=100, num_samples=200, w2_points=100)
    assert rec["num_train"] == 240
    (rec,) = compare("moons", "cfm", steps=2, num_train=300, num_test=100, num_samples=200, w2_points=100)
    assert rec["num_train"] == 300  # an explicit count wins
    args = argparse.ArgumentParser()
    add_arguments(args)
    assert args.parse_args(["--dataset", "moons"]).num_train is None
    with pytest.raises(ValueError, match="num_train"):
        compare("moons", "cfm", steps=2, num_train=1)
