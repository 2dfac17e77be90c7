"""The mask-free rational-quadratic spline against normflows' own, to float64 precision."""

from __future__ import annotations

import normflows as nf
import pytest
import torch
from normflows.utils import splines

from jko_plugin.steps.coupling import IdentityInitCoupledRQSpline
from jko_plugin.steps.layers import build_layer, describe_layer
from jko_plugin.steps.rq_spline import AutoregressiveRQSpline, rational_quadratic_spline, use_fast_spline


def _params(n: int, features: int, bins: int, scale: float = 2.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(bins)
    shapes = [(n, features, bins), (n, features, bins), (n, features, bins - 1)]
    return [(scale * torch.randn(s, generator=g, dtype=torch.float64)).requires_grad_() for s in shapes]


@pytest.mark.parametrize("bins", [1, 4, 64])
@pytest.mark.parametrize("inverse", [False, True])
def test_spline_equals_normflows_in_value_and_gradient(bins: int, inverse: bool) -> None:
    bound = 3.0
    x = 2.5 * torch.randn(400, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:4, 0] = torch.tensor([-bound, bound, -bound - 1e-9, bound + 1e-9], dtype=torch.float64)
    assert (x.abs() > bound).any() and (x.abs() < bound).any()  # both tails and the interior
    results = []
    for fn in (splines.unconstrained_rational_quadratic_spline, rational_quadratic_spline):
        xi = x.clone().requires_grad_()
        params = _params(400, 2, bins)
        out, log_deriv = fn(xi, *params, inverse=inverse, tail_bound=bound)
        (out.sin().sum() + log_deriv.cos().sum()).backward()
        results.append([out, log_deriv, xi.grad, *(p.grad for p in params)])
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    outside = x.abs() > bound
    assert torch.equal(results[1][0][outside], x[outside]) and (results[1][1][outside] == 0).all()


@pytest.mark.parametrize("inverse", [False, True])
def test_one_shared_spline_equals_the_same_spline_repeated_per_input(inverse: bool) -> None:
    x = 2.5 * torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    results = []
    for shared in (True, False):
        xi = x.clone().requires_grad_()
        params = [p[0, 0].detach().clone().requires_grad_() for p in _params(1, 1, 16)]
        per_input = [p if shared else p.expand(300, -1) for p in params]
        out, log_deriv = rational_quadratic_spline(xi, *per_input, inverse=inverse, tail_bound=2.0)
        (out.sin().sum() + log_deriv.cos().sum()).backward()
        results.append([out, log_deriv, xi.grad, *(p.grad for p in params)])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_spline_inverse_undoes_forward_and_checks_bins() -> None:
    x = 2.0 * torch.randn(300, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = [p.detach() for p in _params(300, 3, 16)]
    y, log_deriv = rational_quadratic_spline(x, *params, tail_bound=2.0)
    back, inverse_log_deriv = rational_quadratic_spline(y, *params, inverse=True, tail_bound=2.0)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(inverse_log_deriv, -log_deriv, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="too large for the number of bins"):
        rational_quadratic_spline(x, *_params(300, 3, 2000), min_bin_width=1e-3)


def _perturb(layer: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("context", [None, 3])
def test_layers_equal_normflows_layers_with_the_same_weights(context: int | None) -> None:
    torch.manual_seed(0)
    pairs = [
        (
            AutoregressiveRQSpline(4, 1, 16, num_context_channels=context, num_bins=8, tail_bound=2.0),
            nf.flows.AutoregressiveRationalQuadraticSpline(
                4, 1, 16, num_context_channels=context, num_bins=8, tail_bound=2.0
            ),
        ),
        (
            IdentityInitCoupledRQSpline(4, 1, 16, num_context_channels=context, num_bins=8, tail_bound=2.0),
            nf.flows.CoupledRationalQuadraticSpline(
                4, 1, 16, num_context_channels=context, num_bins=8, tail_bound=2.0
            ),
        ),
    ]
    x = 1.5 * torch.randn(200, 4, dtype=torch.float64)
    given = {} if context is None else {"context": torch.randn(200, context, dtype=torch.float64)}
    for ours, theirs in pairs:
        _perturb(ours, 3)
        ours.double()
        assert theirs.load_state_dict(ours.state_dict()) is not None  # same keys, nothing left over
        theirs.double()
        for direction in ("forward", "inverse"):
            a, b = getattr(ours, direction)(x, **given), getattr(theirs, direction)(x, **given)
            assert not torch.allclose(a[0], x)  # a map that moves, so the comparison says something
            torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-10)


def test_layer_saves_under_its_own_name_and_the_old_name_still_loads() -> None:
    layer = build_layer(
        {
            "class": "AutoregressiveRQSpline",
            "kwargs": {"num_input_channels": 2, "num_blocks": 1, "num_hidden_channels": 8, "num_bins": 4},
        }
    )
    assert type(layer) is AutoregressiveRQSpline
    fresh = AutoregressiveRQSpline(2, 1, 8, num_bins=4, tail_bound=5.0)
    spec = describe_layer(fresh)
    assert spec["class"] == "AutoregressiveRQSpline" and spec["kwargs"]["tail_bound"] == 5.0
    old = build_layer({"class": "AutoregressiveRationalQuadraticSpline", "kwargs": spec["kwargs"]})
    assert type(old) is nf.flows.AutoregressiveRationalQuadraticSpline  # saved models keep their class
    assert set(old.state_dict()) == set(fresh.state_dict())
    with pytest.raises(TypeError, match="no fast spline for a Linear"):
        use_fast_spline(torch.nn.Linear(2, 2))


def test_float32_inverse_on_the_knots_is_finite_and_exact() -> None:
    # On a knot the inverse's discriminant is 0 up to rounding; normflows asserts it is >= 0 and can
    # fail in float32, ours clamps it and lands on the knot.
    bins, bound = 32, 3.0
    g = torch.Generator().manual_seed(5)
    w, h = torch.randn(1, 1, bins, generator=g), torch.randn(1, 1, bins, generator=g)
    d = torch.randn(1, 1, bins - 1, generator=g)

    def knots(u: torch.Tensor) -> torch.Tensor:
        share = 1e-3 + (1 - 1e-3 * bins) * torch.softmax(u, -1)
        return torch.cat([torch.zeros(1), torch.cumsum(share, -1).flatten()]) * 2 * bound - bound

    xk, yk = knots(w)[1:-1], knots(h)[1:-1]
    n = xk.numel()

    def spline(points: torch.Tensor, widths: torch.Tensor, inverse: bool = False) -> tuple:
        params = widths.expand(n, 1, bins), h.expand(n, 1, bins), d.expand(n, 1, bins - 1)
        return rational_quadratic_spline(points, *params, inverse=inverse, tail_bound=bound)

    x, _ = spline(yk[:, None], h, inverse=True)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[:, 0], yk, rtol=0, atol=1e-5)  # widths = heights here: the identity on knots
    y, _ = spline(xk[:, None], w)
    back, log_deriv = spline(y, w, inverse=True)
    assert torch.isfinite(log_deriv).all()
    torch.testing.assert_close(y[:, 0], yk, rtol=0, atol=1e-5)
    torch.testing.assert_close(back[:, 0], xk, rtol=0, atol=1e-5)
