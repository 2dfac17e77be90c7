r"""Offline data: 2-D toys, Gaussian mixtures with exact densities, digits, MAF benchmarks, user files."""

from .toys import *  # noqa: F403  (split into modules in the next commit)
from .toys import __all__  # noqa: F401
