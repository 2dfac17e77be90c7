r"""jko-plugin: JKO flow models (block-wise Wasserstein proximal steps) for normflows and diffusers."""

from .block import JKOBlock, Transport
from .step import JKOStep
from .velocity import VelocityMLP

__version__ = "0.1.0"

__all__ = ["JKOBlock", "JKOStep", "Transport", "VelocityMLP", "__version__"]
