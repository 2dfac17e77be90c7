import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import jko_plugin


def test_import_star_exports_public_names_only():
    ns: dict = {}
    exec("from jko_plugin import *", ns)
    assert "JKOBlock" in ns and "__version__" in ns
    assert "np" not in ns and "torch" not in ns
    for name in jko_plugin.__all__:
        assert hasattr(jko_plugin, name)
    assert 15 <= len(jko_plugin.__all__) <= 25  # what users need; plumbing stays in the modules


def test_every_module_is_small_and_declares_its_public_names():
    for info in pkgutil.walk_packages(jko_plugin.__path__, "jko_plugin."):
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        assert names is not None, f"{info.name} has no __all__"
        assert all(not n.startswith("_") or n == "__version__" for n in names), (info.name, names)
        assert all(hasattr(module, n) for n in names), info.name
        assert module.__doc__, f"{info.name} has no docstring"
        lines = len(Path(module.__file__).read_text().splitlines())
        assert lines <= 420, f"{info.name} has {lines} lines"


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
    code = (
        "import importlib.util, diffusers, normflows, geomloss, jko_plugin;"
        "print(importlib.util.find_spec('torchvision'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
