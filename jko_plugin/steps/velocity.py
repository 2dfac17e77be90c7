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
        context_dim: Features of a context ``c`` the field depends on, ``f(x, s, c)`` (0: none).
            Like the time, ``c`` enters as a shift of the first layer's bias, so the tangents wrt
            ``x`` (trace, Jacobian) are computed exactly as without it.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        time_dependent: bool = True,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        positive_int("dim", dim)
        positive_int("context_dim", context_dim, minimum=0)
        hidden = tuple(hidden)
        if len(hidden) == 0:
            raise ValueError("hidden must name at least one hidden layer width, got ()")
        for i, h in enumerate(hidden):
            positive_int(f"hidden[{i}]", h)
        self.act = ACTIVATIONS[choice("activation", activation, ACTIVATIONS)]
        self.dim = dim
        self.time_dependent = time_dependent
        self.context_dim = context_dim
        widths = (dim + int(time_dependent) + context_dim, *hidden, dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # A small last layer keeps a fresh block close to the identity map without making it
        # exactly the identity (which would stall the gradients of the inner layers).
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.1)
            self.layers[-1].bias.zero_()

    def _first_pre(self, x: Tensor, s: float | Tensor, context: Tensor | None = None) -> Tensor:
        # The time and context inputs enter as a shifted bias instead of concatenated columns: no
        # copy of x, and nothing that depends on x but x @ w_x.
        first = self.layers[0]
        w_x = first.weight[:, : self.dim]
        bias = first.bias
        if self.time_dependent:
            w_t = first.weight[:, self.dim]
            if isinstance(s, Tensor) and s.dim() > 0:
                bias = bias + s.to(x).reshape(-1, 1) * w_t
            else:
                bias = bias + float(s) * w_t
        if self.context_dim:
            if context is None or tuple(context.shape) != (x.shape[0], self.context_dim):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"this velocity field needs a context of shape ({x.shape[0]}, {self.context_dim}), "
                    f"got {got}"
                )
            bias = bias + context.to(x) @ first.weight[:, self.dim + int(self.time_dependent) :].t()
        elif context is not None:
            raise ValueError("this velocity field was built without context (context_dim=0), got a context")
        return torch.addmm(bias, x, w_x.t()) if bias.dim() == 1 else bias + x @ w_x.t()

    def forward(self, x: Tensor, s: float | Tensor, context: Tensor | None = None) -> Tensor:
        """Velocity ``f(x, s[, c])``; ``x`` has shape ``(batch, d)``, ``s`` is a float or ``(batch,)``,
        ``context`` ``(batch, context_dim)`` when the field has one."""
        h = self.act.fn(self._first_pre(x, s, context))
        for layer in self.layers[1:-1]:
            h = self.act.fn(layer(h))
        return self.layers[-1](h)

    def forward_with_trace(
        self, x: Tensor, s: float | Tensor, probes: Tensor | None = None, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Velocity and divergence: ``(f(x, s), tr(df/dx))``, shapes ``(batch, d)`` and ``(batch,)``.

        With ``probes`` of shape ``(batch, k, d)`` the trace is Hutchinson's estimate
        ``mean_k probe^T (df/dx) probe``; without, it is exact (tangents along the ``d`` axes).
        """
        w_x = self.layers[0].weight[:, : self.dim]
        pre = self._first_pre(x, s, context)
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

    def forward_with_jacobian(
        self, x: Tensor, s: float | Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Velocity and its full Jacobian: ``(f(x, s), df/dx)``, shapes ``(batch, d)`` and
        ``(batch, d, d)`` with ``[b, i, j] = d f_i / d x_j`` (the ``d`` tangents of the exact trace,
        kept whole)."""
        w_x = self.layers[0].weight[:, : self.dim]
        pre = self._first_pre(x, s, context)
        h = self.act.fn(pre)
        tangent = w_x.t().unsqueeze(0) * self.act.grad(pre, h).unsqueeze(1)  # (batch, d, h1)
        for layer in self.layers[1:-1]:
            pre = layer(h)
            h = self.act.fn(pre)
            tangent = (tangent @ layer.weight.t()) * self.act.grad(pre, h).unsqueeze(1)
        last = self.layers[-1]
        return last(h), (tangent @ last.weight.t()).transpose(1, 2)


def func_divergence(
    net: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    probes: Tensor | None = None,
    context: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Velocity and divergence of any network ``net(x, t)`` by ``torch.func``: ``(f, tr(df/dx))``.

    Exact: the per-sample Jacobian from ``vmap(jacfwd(...))`` (``d`` tangents per sample). With
    ``probes`` of shape ``(batch, k, d)``: Hutchinson's ``mean_k probe^T (df/dx) probe`` from ``k``
    batched Jacobian-vector products. Both are differentiable by ordinary autograd (training), and
    both assume that rows do not interact (no batch statistics): the per-sample Jacobian is what
    the change of variables needs.

    Args:
        net: ``net(x, t) -> f``, ``x`` of shape ``(batch, d)``, ``t`` of shape ``(batch,)``; called
            ``net(x, t, context)`` when a ``context`` is given.
        x: Points, shape ``(batch, d)``.
        t: Times, shape ``(batch,)``.
        probes: Optional Rademacher probes, shape ``(batch, k, d)``.
        context: Optional per-row context ``(batch, c)``, held fixed (no derivative wrt it).

    Returns:
        ``f`` of shape ``(batch, d)`` and the divergence, shape ``(batch,)``.

    Example:
        >>> net = lambda x, t: -x * (1 + t[:, None])  # div = -d (1 + t)
        >>> func_divergence(net, torch.randn(3, 2), torch.full((3,), 0.5))[1]
        tensor([-3., -3., -3.])
    """
    extra = () if context is None else (context,)
    if probes is None:

        def one(xi: Tensor, ti: Tensor, *ci: Tensor) -> tuple[Tensor, Tensor]:
            out = net(xi.unsqueeze(0), ti.unsqueeze(0), *(c.unsqueeze(0) for c in ci)).squeeze(0)
            return out, out

        jac, v = torch.func.vmap(torch.func.jacfwd(one, has_aux=True))(x, t, *extra)
        return v, torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1)
    v, trace = None, x.new_zeros(x.shape[0])
    for k in range(probes.shape[1]):
        v, jv = torch.func.jvp(lambda y: net(y, t, *extra), (x,), (probes[:, k],))
        trace = trace + (jv * probes[:, k]).sum(-1)
    return v, trace / probes.shape[1]
