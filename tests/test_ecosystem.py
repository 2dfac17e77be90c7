"""What a new user meets first: the base install, missing extras, --device, bad inputs (one line each)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from jko_plugin import cli
from jko_plugin.compare.methods import DEFAULT_METHODS, METHODS
from jko_plugin.datasets.files import check_columns, describe_scale, load_samples
from jko_plugin.training.distributed import resolve_device
from jko_plugin.training.options import TrainingDiverged

# Runs jko-flow commands in a fresh interpreter where the named packages cannot be imported, as on
# a base install without the extras; prints {name: [exit status, stdout, stderr]} as JSON.
RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # "import name" fails, find_spec(name) is None: as if not installed
    import jko_plugin.datasets as datasets
    from jko_plugin import cli

    moons = datasets.two_moons  # the demo's 20000 points, cut to a test's size
    datasets.two_moons = lambda n, **kw: moons(min(n, 400), **kw)
    results = {}
    for name, argv in json.loads(sys.argv[2]).items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except BaseException as e:  # a traceback would reach the user: report it
                status = f"raised {type(e).__name__}: {e}"
        results[name] = [status, out.getvalue(), err.getvalue()]
    print(json.dumps(results))
    """
)


def run_blocked(tmp_path, blocked, commands):
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(blocked), json.dumps(commands)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.csv"
    np.savetxt(path, rng.standard_normal((300, 2)) * [1.0, 0.5], delimiter=",")
    return path


def test_base_install_without_matplotlib_runs_every_command_and_says_why_no_figure(tmp_path, data_file):
    small = ["--blocks", "1", "--iterations", "2", "--batch-size", "64", "--quiet", "--device", "cpu"]
    commands = {
        "demo": ["demo", "--out", "demo", *small],
        "train": ["train", "--data", str(data_file), "--out", "run", *small],
        "sample": ["sample", "--model", "run/model", "-n", "5", "--out", "s.npy", "--device", "cpu"],
        "compare": ["compare", "--methods", "cfm,otcfm", "--steps", "2", "--num-train", "200",
                    "--num-test", "100", "--out", "cmp", "--device", "cpu"],
    }  # fmt: skip
    results = run_blocked(tmp_path, ["matplotlib"], commands)
    for name, (status, out, err) in results.items():
        assert status == 0, (name, status, err)
        assert "Traceback" not in err, (name, err)
    for name in ("demo", "train", "compare"):
        note = [line for line in results[name][1].splitlines() if line.startswith("note:")]
        assert note == ["note: matplotlib is not installed, so no figures were written (pip install "
                        "'jko-plugin[plot]')"], results[name][1]  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["figures"] == [] and not list((tmp_path / "run").glob("*.png"))
    assert np.load(tmp_path / "s.npy").shape == (5, 2)
    assert (tmp_path / "cmp" / "results.json").is_file() and not (tmp_path / "cmp" / "samples.png").exists()


def test_missing_optional_packages_and_bad_inputs_get_one_line_and_a_nonzero_exit(tmp_path, data_file):
    const = tmp_path / "const.csv"
    np.savetxt(const, np.c_[np.random.default_rng(0).standard_normal(50), np.full(50, 3.0)], delimiter=",")
    small = ["--blocks", "1", "--iterations", "2", "--batch-size", "64", "--quiet", "--device", "cpu"]
    commands = {
        "otcfm": ["compare", "--methods", "otcfm", "--steps", "2", "--out", "c1"],
        "torchcfm": ["compare", "--methods", "cfm,torchcfm", "--steps", "2", "--out", "c2"],
        "flow_matching": ["compare", "--methods", "flow_matching", "--steps", "2", "--out", "c3"],
        "tensorboard": ["train", "--data", str(data_file), "--out", "r", "--log-dir", "tb", *small],
        "nomodel": ["sample", "--model", "nomodel", "-n", "5", "--out", "s.npy"],
        "constant": ["train", "--data", str(const), "--out", "r2", *small],
    }
    blocked = ["ot", "torchcfm", "flow_matching", "tensorboard"]
    results = run_blocked(tmp_path, blocked, commands)
    expect = {
        "otcfm": "error: compare method 'otcfm': ot is not installed: pip install POT",
        "torchcfm": "error: compare method 'torchcfm': torchcfm is not installed: pip install POT && "
        "pip install --no-deps torchcfm",
        "flow_matching": "error: compare method 'flow_matching': flow_matching is not installed: "
        "pip install 'jko-plugin[fm]'",
        "tensorboard": "error: logging to tb needs TensorBoard: pip install tensorboard",
        "nomodel": "error: --model nomodel: no such folder",
        "constant": "error: column 1 (every row is 3) is constant: a density on it is degenerate",
    }
    for name, start in expect.items():
        status, out, err = results[name]
        assert status == 2, (name, status, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith(start), (name, err)
    assert not (tmp_path / "c2").exists()  # refused before training anything


def test_default_methods_need_only_the_base_install():
    import configparser
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    lines = cfg["options"]["install_requires"].split()
    base = {line.split(">")[0].split("=")[0].strip().lower() for line in lines}
    pip_names = {"ot": "pot"}
    for name in DEFAULT_METHODS.split(","):
        for package in METHODS[name].requires:
            assert pip_names.get(package, package) in base, (name, package)
    assert {"torchcfm", "torchcfm-ot", "flow_matching"} <= set(METHODS)
    assert not {"torchcfm", "torchcfm-ot", "flow_matching"} & set(DEFAULT_METHODS.split(","))


def test_diverged_training_names_the_data_scale(tmp_path, monkeypatch, capsys):
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).standard_normal((200, 2)) * 1e6)

    def diverges(*args, **kwargs):
        raise TrainingDiverged("block 1 diverged at iteration 3 (loss nan); lower lr")

    monkeypatch.setattr("jko_plugin.workflows.run_training", diverges)
    argv = ["train", "--data", str(path), "--out", str(tmp_path / "o"), "--quiet", "--no-standardize"]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 1 and len(err.strip().splitlines()) == 1
    scale = describe_scale(load_samples(path))  # "column standard deviations ..., largest |value| ..."
    assert scale.endswith("e+06") and f"({scale})" in err
    assert "block 1 diverged" in err and "train without --no-standardize" in err
    # standardised (the default): the scale is named, the advice is about the optimiser
    assert cli.main(argv[:-1]) == 1
    err = capsys.readouterr().err
    assert f"({scale})" in err and "lower --lr" in err


def test_column_checks():
    rng = np.random.default_rng(0)
    x = np.c_[rng.standard_normal(500), rng.integers(0, 4, 500), rng.standard_normal(500)]
    (warning,) = check_columns(x)
    assert warning.startswith("column 1 takes only 4 distinct values in 500 rows")
    assert check_columns(rng.standard_normal((500, 3))) == []
    with pytest.raises(ValueError, match=r"columns 0 \(every row is 1\), 2 \(every row is -2\) are constant"):
        check_columns(torch.tensor([[1.0, 0.0, -2.0], [1.0, 1.0, -2.0]]))
    scale = describe_scale(np.array([[0.0, 10.0], [2.0, 30.0]]))
    assert scale == "column standard deviations 1 to 10, largest |value| 30"


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be a torch device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    # Under torchrun, the default and a bare "cuda" mean this process's GPU (one per local rank).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device(None) == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda") == torch.device("cuda")


def test_cli_device_option_reaches_training(tmp_path, data_file, monkeypatch, capsys):
    seen = {}

    def fake(x_train, x_test, out, config, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr("jko_plugin.workflows.run_training", fake)
    assert cli.main(["train", "--data", str(data_file), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert seen["device"] == "cpu" and seen["log_dir"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = cli.main(["compare", "--steps", "1", "--device", "cuda", "--out", str(tmp_path / "c")])
    assert status == 2 and "CUDA is not available" in capsys.readouterr().err
