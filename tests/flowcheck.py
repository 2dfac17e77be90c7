"""A FlowTest-style helper shared by the tests of every flow layer (normflows + zuko style)."""

import math

import torch
from torch.autograd.functional import jacobian


def moons(n: int, seed: int = 0) -> torch.Tensor:
    """Standardised two moons (noise 0.05) from a seeded torch generator, float32 (n, 2).

    The tests' own small generator: fixed numbers for fixed seeds, independent of
    jko_plugin.datasets, whose tests check that module separately."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=g)
    return (pts - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


def check_flow(flow, x: torch.Tensor, *, atol: float = 1e-6) -> None:
    """Round trip, output/log_det dtype, device and shape, and log-dets that cancel."""
    z, ld_inv = flow.inverse(x)
    x_back, ld_fwd = flow.forward(z)
    for t in (z, x_back):
        assert t.shape == x.shape and t.dtype == x.dtype and t.device == x.device
    for ld in (ld_inv, ld_fwd):
        assert ld.shape == (x.shape[0],) and ld.dtype == x.dtype and ld.device == x.device
    torch.testing.assert_close(x_back, x, atol=atol, rtol=0)
    torch.testing.assert_close(ld_inv + ld_fwd, torch.zeros_like(ld_inv), atol=atol, rtol=0)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a map R^d -> R^d at each row of x, from autograd Jacobians."""
    out = []
    for row in x:
        J = jacobian(lambda u: fn(u.unsqueeze(0)).squeeze(0), row)
        out.append(torch.linalg.slogdet(J)[1])
    return torch.stack(out)


def perturb(module: torch.nn.Module, scale: float = 0.5) -> None:
    """Give every parameter random values of order `scale` (a non-trivial, still tame map)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale / max(1, p.shape[-1]) ** 0.5)


def spline_bins(flow: torch.nn.Module) -> set[int]:
    """The bin counts of every autoregressive RQ-spline layer in ``flow``."""
    return {f.mprqat.num_bins for f in flow.modules() if hasattr(f, "mprqat")}


class RevisingPlan:
    """An ``IterationPlan`` that plans ``planned`` iterations per block, then asks for ``revised``
    once a block's probe has run; it records each ``revise(done, seconds)`` call in ``asked``."""

    def __init__(self, planned: int, revised: int) -> None:
        self.planned, self.revised, self.asked = planned, revised, []

    def iterations(self, block, history) -> int:
        return self.planned

    def revise(self, done: int, seconds: float) -> int:
        self.asked.append((done, seconds))
        return self.revised
