r"""The velocity field of a JKO block: an MLP with its Jacobian trace in the same pass, or any network
with its trace from ``torch.func``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._ops import ACTIVATIONS
from .._validate import choice, positive_int

__all__ = ["VelocityMLP", "func_divergence"]


class VelocityMLP(nn.Module):
    """MLP velocity field ``f(x, s)`` on ``R^d``, with ``s`` the block's normalised time in [0, 1].

    Besides ``f`` it returns ``tr(df/dx)``, exactly (``d`` tangents) or by Hutchinson's estimator
    (random probes). Tangents are pushed through the layers by hand, next to the values, so the
    trace costs a few extra matmuls and is differentiated by ordinary first-order autograd.

    Args:
        dim: Dimension ``d`` of ``x``.
        hidden: Widths of the hidden layers (at least one).
        activation: One of ``ACTIVATIONS`` (``"tanh"``, ``"softplus"``, ``"silu"``, ``"elu"``).
        time_dependent: Whether ``s`` is an input of the network.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        time_dependent: bool = True,
    ) -> None:
        super().__init__()
        positive_int("dim", dim)
        hidden = tuple(hidden)
        if len(hidden) == 0:
            raise ValueError("hidden must name at least one hidden layer width, got ()")
        for i, h in enumerate(hidden):
            positive_int(f"hidden[{i}]", h)
        self.act = ACTIVATIONS[choice("activation", activation, ACTIVATIONS)]
        self.dim = dim
        self.time_dependent = time_dependent
        widths = (dim + int(time_dependent), *hidden, dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # A small last layer keeps a fresh block close to the identity map without making it
        # exactly the identity (which would stall the gradients of the inner layers).
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.1)
            self.layers[-1].bias.zero_()

    def _first_pre(self, x: Tensor, s: float | Tensor) -> Tensor:
        # The time input enters as a shifted bias instead of a concatenated column: no copy of x.
        first = self.layers[0]
        w_x = first.weight[:, : self.dim]
        if not self.time_dependent:
            return torch.addmm(first.bias, x, w_x.t())
        w_t = first.weight[:, self.dim]
        if isinstance(s, Tensor) and s.dim() > 0:
            bias = first.bias + s.to(x).reshape(-1, 1) * w_t
        else:
            bias = first.bias + float(s) * w_t
        return torch.addmm(bias, x, w_x.t()) if bias.dim() == 1 else bias + x @ w_x.t()

    def forward(self, x: Tensor, s: float | Tensor) -> Tensor:
        """Velocity ``f(x, s)``; ``x`` has shape ``(batch, d)``, ``s`` is a float or ``(batch,)``."""
        h = self.act.fn(self._first_pre(x, s))
        for layer in self.layers[1:-1]:
            h = self.act.fn(layer(h))
        return self.layers[-1](h)

    def forward_with_trace(
        self, x: Tensor, s: float | Tensor, probes: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Velocity and divergence: ``(f(x, s), tr(df/dx))``, shapes ``(batch, d)`` and ``(batch,)``.

        With ``probes`` of shape ``(batch, k, d)`` the trace is Hutchinson's estimate
        ``mean_k probe^T (df/dx) probe``; without, it is exact (tangents along the ``d`` axes).
        """
        w_x = self.layers[0].weight[:, : self.dim]
        pre = self._first_pre(x, s)
        h = self.act.fn(pre)
        grad = self.act.grad(pre, h).unsqueeze(1)
        if probes is None:
            # The tangent of unit vector e_i after the first layer is column i of w_x, for every
            # sample: (1, d, h1) broadcast against the batch.
            tangent = w_x.t().unsqueeze(0) * grad
        else:
            tangent = (probes @ w_x.t()) * grad  # (batch, k, h1)
        for layer in self.layers[1:-1]:
            pre = layer(h)
            h = self.act.fn(pre)
            tangent = (tangent @ layer.weight.t()) * self.act.grad(pre, h).unsqueeze(1)
        last = self.layers[-1]
        v = last(h)
        if probes is None:
            # Only the Jacobian's diagonal is needed: tangent i against row i of the last weight.
            trace = (tangent * last.weight).sum(dim=(1, 2))
        else:
            trace = ((tangent @ last.weight.t()) * probes).sum(-1).mean(-1)
        return v, trace


def func_divergence(
    net: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor, probes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Velocity and divergence of any network ``net(x, t)`` by ``torch.func``: ``(f, tr(df/dx))``.

    Exact: the per-sample Jacobian from ``vmap(jacfwd(...))`` (``d`` tangents per sample). With
    ``probes`` of shape ``(batch, k, d)``: Hutchinson's ``mean_k probe^T (df/dx) probe`` from ``k``
    batched Jacobian-vector products. Both are differentiable by ordinary autograd (training), and
    both assume that rows do not interact (no batch statistics): the per-sample Jacobian is what
    the change of variables needs.

    Args:
        net: ``net(x, t) -> f``, ``x`` of shape ``(batch, d)``, ``t`` of shape ``(batch,)``.
        x: Points, shape ``(batch, d)``.
        t: Times, shape ``(batch,)``.
        probes: Optional Rademacher probes, shape ``(batch, k, d)``.

    Returns:
        ``f`` of shape ``(batch, d)`` and the divergence, shape ``(batch,)``.

    Example:
        >>> net = lambda x, t: -x * (1 + t[:, None])  # div = -d (1 + t)
        >>> func_divergence(net, torch.randn(3, 2), torch.full((3,), 0.5))[1]
        tensor([-3., -3., -3.])
    """
    if probes is None:

        def one(xi: Tensor, ti: Tensor) -> tuple[Tensor, Tensor]:
            out = net(xi.unsqueeze(0), ti.unsqueeze(0)).squeeze(0)
            return out, out

        jac, v = torch.func.vmap(torch.func.jacfwd(one, has_aux=True))(x, t)
        return v, torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1)
    v, trace = None, x.new_zeros(x.shape[0])
    for k in range(probes.shape[1]):
        v, jv = torch.func.jvp(lambda y: net(y, t), (x,), (probes[:, k],))
        trace = trace + (jv * probes[:, k]).sum(-1)
    return v, trace / probes.shape[1]
