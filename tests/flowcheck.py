"""A FlowTest-style helper shared by the tests of every flow layer (normflows + zuko style)."""

import torch
from torch.autograd.functional import jacobian


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
