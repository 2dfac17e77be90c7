"""What a wheel carries: the MIT licence, the PEP 561 marker and the project URLs."""

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_licence_typed_marker_and_urls(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, used without isolation (no network)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("jko_plugin-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        licence = z.read(next(n for n in names if n.endswith("/LICENSE"))).decode()
    assert "jko_plugin/py.typed" in names
    assert licence.startswith("MIT License") and "WITHOUT WARRANTY" in licence
    assert "License: MIT" in metadata
    urls = [line for line in metadata.splitlines() if line.startswith("Project-URL:")]
    assert len(urls) >= 2 and all("https://" in u for u in urls)


def test_setup_cfg_licence_matches_the_file():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().splitlines()[0] == "MIT License"
    assert "py.typed" in cfg["options.package_data"]["jko_plugin"]
