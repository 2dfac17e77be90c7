import subprocess
import sys

import jko_plugin


def test_import_star_exports_public_names_only():
    ns: dict = {}
    exec("from jko_plugin import *", ns)
    assert "JKOBlock" in ns and "__version__" in ns
    assert "np" not in ns and "torch" not in ns
    for name in jko_plugin.__all__:
        assert hasattr(jko_plugin, name)


def test_adapters_are_a_subpackage_not_a_top_level_module(tmp_path):
    code = (
        "import importlib.util, jko_plugin.adapters as a;"
        "print(a.__name__);"
        "print(importlib.util.find_spec('adapters') is None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["jko_plugin.adapters", "True"]


def test_diffusers_imports_beside_torch(tmp_path):
    # torchvision from PyPI breaks `import diffusers` with this torch: it must not be installed.
    code = "import importlib.util, diffusers, normflows, geomloss, jko_plugin; print(importlib.util.find_spec('torchvision'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
