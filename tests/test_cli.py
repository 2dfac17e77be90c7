import json
import subprocess
import sys

import numpy as np
import pytest

from jko_plugin.cli import main
from jko_plugin.datasets import two_moons

from .flowcheck import spline_bins


def test_demo_writes_figure_metrics_and_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--blocks", "2", "--iterations", "15", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_nll", "w2", "w2_floor", "train_seconds", "blocks"):
        assert key in metrics
    assert len(metrics["blocks"]) == 2
    assert {"w2_movement", "kl_estimate", "inversion_error", "loss"} <= set(metrics["blocks"][0])
    assert metrics["w2"] > metrics["w2_floor"] > 0
    assert (out / "samples.png").stat().st_size > 1000
    assert (out / "model" / "model_index.json").exists()
    assert "test NLL" in capsys.readouterr().out


def test_train_then_sample_on_user_files(tmp_path):
    x = two_moons(1200, seed=0, noise=0.05, standardize=True).numpy()
    np.save(tmp_path / "pts.npy", x)
    np.savetxt(tmp_path / "pts.csv", x, delimiter=",")
    args = ["--blocks", "2", "--iterations", "10", "--batch-size", "256", "--quiet"]
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "pts.csv"),
                "--out",
                str(tmp_path / "run"),
                "--block",
                "spline",
                *args,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "run" / "model"),
                "-n",
                "50",
                "--out",
                str(tmp_path / "s.npy"),
            ]
        )
        == 0
    )
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (50, 2) and np.isfinite(s).all()
    # Same seed, same samples; the saved model reproduces the trained flow.
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "run" / "model"),
                "-n",
                "50",
                "--out",
                str(tmp_path / "t.csv"),
            ]
        )
        == 0
    )
    np.testing.assert_allclose(np.loadtxt(tmp_path / "t.csv", delimiter=","), s, rtol=1e-5, atol=1e-6)
    # A second run into the same folder neither overwrites nor resumes unless asked.
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    assert main(["train", "--data", str(tmp_path / "pts.npy"), "--out", str(tmp_path / "run"), *args]) == 2
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before


def test_train_reports_bad_data(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(300, 2))
    x[:7, 1] = np.nan
    np.save(tmp_path / "bad.npy", x)
    assert main(["train", "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "7" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert (
        main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    )
    assert (
        main(["sample", "--model", str(tmp_path / "nomodel"), "-n", "5", "--out", str(tmp_path / "s.npy")])
        == 2
    )


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "jko_plugin.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "jko-plugin" in out.stdout


def test_compare_is_wired_into_the_cli(tmp_path):
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "compare",
                "--dataset",
                "moons",
                "--methods",
                "jko-spline,realnvp",
                "--steps",
                "30",
                "--num-train",
                "600",
                "--num-test",
                "300",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["jko-spline", "realnvp"]
    assert (out / "table.md").exists()


def test_trace_option_reaches_the_config():
    from jko_plugin.cli import _overrides, build_parser
    from jko_plugin.workflows import RunConfig, default_config

    args = build_parser().parse_args(
        ["train", "--data", "x.npy", "--out", "o", "--block", "ode", "--trace", "hutchinson"]
    )
    assert default_config("ode", **_overrides(args)).trace == "hutchinson"
    with pytest.raises(ValueError, match="trace must be one of"):
        RunConfig(trace="approx")


def test_spline_bins_option_reaches_the_flow_and_a_bad_count_is_one_line(tmp_path, capsys):
    from jko_plugin.cli import _overrides, build_parser
    from jko_plugin.workflows import build_flow, default_config

    args = build_parser().parse_args(["train", "--data", "x.npy", "--out", "o", "--spline-bins", "32"])
    flow = build_flow(default_config("spline", **_overrides(args)), 2)
    assert spline_bins(flow) == {32}
    np.save(tmp_path / "pts.npy", two_moons(200, seed=0).numpy())
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "pts.npy"), "--out", str(out), "--spline-bins", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "spline_bins" in err and len(err.splitlines()) == 1
    assert not (out / "model").exists()


def test_first_tail_bound_option_reaches_step_one_and_misuse_is_one_line(tmp_path, capsys):
    from jko_plugin import jko_steps
    from jko_plugin.cli import _overrides, build_parser
    from jko_plugin.workflows import build_flow, default_config

    argv = ["train", "--data", "x.npy", "--out", "o", "--first-tail-bound", "2.5"]
    flow = build_flow(default_config("spline", **_overrides(build_parser().parse_args(argv))), 2)
    bounds = [{m.tail_bound for m in s.modules() if hasattr(m, "tail_bound")} for s in jko_steps(flow)]
    assert bounds == [{2.5}, {5.0}, {5.0}, {5.0}]
    np.save(tmp_path / "pts.npy", two_moons(200, seed=0).numpy())
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "pts.npy"), "--out", str(out), "--block", "ode"]
    code = main([*argv, "--first-tail-bound", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "first_tail_bound is for steps made of splines" in err and len(err.splitlines()) == 1
    assert not (out / "model").exists()
