"""JKOStep sampling when a normflows layer fails its float32 check."""

import math

import normflows as nf
import torch

from jko_plugin.steps.map import JKOStep


class _Float32Fragile(nf.flows.Flow):
    """A layer that, like normflows' spline inverse on a bin edge, fails its own check in float32."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, z):
        assert z.dtype == torch.float64, "negative discriminant"
        return z * self.scale, torch.full(
            z.shape[:1], float(torch.log(self.scale.detach())) * z.shape[1], dtype=z.dtype
        )

    def inverse(self, x):
        return x / self.scale, torch.full(
            x.shape[:1], -float(torch.log(self.scale.detach())) * x.shape[1], dtype=x.dtype
        )


def test_a_layer_that_fails_in_float32_is_sampled_in_float64():
    step = JKOStep([_Float32Fragile()], dim=3)
    z = torch.randn(5, 3)
    x, log_det = step.forward(z)
    assert x.dtype == torch.float32 and step.flows[0].scale.dtype == torch.float32  # the step is unchanged
    torch.testing.assert_close(x, 2 * z)
    torch.testing.assert_close(log_det, torch.full((5,), 3 * math.log(2.0)))
