r"""Gaussian interpolation flows ``x_t = a(t) x_1 + b(t) z``: linear, trigonometric and VP paths.

Time convention (stated once, here): ``t`` runs from 0 (noise ``z ~ N(0, I)``) to 1 (data ``x_1``),
with ``a(0) = 0, a(1) = 1, b(0) = 1, b(1) = 0`` (Gao, Huang, Jiao, "Gaussian interpolation flows",
arXiv:2311.11475). The flow-matching models and samplers of this package (``adapters.flow_matching``,
``sampling.ode``) and diffusers' ``FlowMatchEulerDiscreteScheduler`` use ``sigma = 1 - t`` instead
(0 data, 1 noise, velocity ``dx/dsigma = -dx/dt``); ``GaussianInterpolant.at_sigma`` is that view.

Registered paths (``INTERPOLANTS``; ``u = 1 - t`` is the diffusion time):

- ``"linear"``: ``a = t, b = 1 - t`` (rectified flow, I-CFM with ``sigma_min = 0``);
- ``"trig"``: ``a = sin(pi t / 2), b = cos(pi t / 2)`` (Albergo & Vanden-Eijnden 2023);
- ``"vp"``: variance preserving, cosine schedule (Nichol & Dhariwal 2021, offset ``s = 0.008``):
  ``a = cos(theta(u)) / cos(theta(0))``, ``theta(u) = (u + s) / (1 + s) * pi / 2``, ``b = sqrt(1 - a^2)``;
- ``"vp-linear"``: variance preserving, linear beta schedule (beta from 0.1 to 20; Song et al.
  2021): ``abar(u) = exp(-0.1 u - 9.95 u^2)``, with the end value ``abar(1) = 4.3e-5`` removed so
  that the path ends exactly at noise: ``a = (sqrt(abar) - sqrt(abar(1))) / (1 - sqrt(abar(1)))``,
  ``b = sqrt((1 - abar) / (1 - abar(1)))`` (``a^2 + b^2`` within 0.33% of 1).

On both VP paths ``b'`` is infinite at the data end (``b ~ sqrt(u)``): their conditional velocity
is unbounded there, so they are trained on ``t <= t_max = 1 - 1e-3`` (as VP diffusions are, Song
et al. 2021) and the theory's Lipschitz bounds hold on ``[0, t_max]`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._validate import choice, positive

__all__ = ["INTERPOLANTS", "GaussianInterpolant", "get_interpolant"]

Schedule = Callable[[Tensor], Tensor]
#: Training-time cap of the VP paths (their ``b'`` is infinite at ``t = 1``).
VP_T_MAX = 1.0 - 1e-3
_BOUNDARY_TOL = 1e-6


class GaussianInterpolant:
    r"""The path ``x_t = a(t) x_1 + b(t) z`` between noise (``t = 0``) and data (``t = 1``).

    Args:
        a, b: Elementwise schedules ``t -> a(t)``, ``t -> b(t)`` on tensors of times, with ``a(0) = 0``,
            ``a(1) = 1``, ``b(0) = 1``, ``b(1) = 0``.
        da, db: Their derivatives (default: autograd of ``a`` and ``b``).
        db2: ``d(b^2)/dt``, finite where ``b'`` is not (VP paths at ``t = 1``); default ``2 b b'``.
        name: The registry name (``FlowMatchingModel`` saves it as its ``path``).
        t_max: Training times are drawn from ``[0, t_max]`` (below 1 where ``a'`` or ``b'`` blow
            up at the data end).

    Raises:
        ValueError: Boundary values off by more than 1e-6, or ``t_max`` outside ``(0, 1]``.

    Example:
        >>> path = INTERPOLANTS["linear"]
        >>> x1, z, t = torch.ones(1, 2), torch.zeros(1, 2), torch.tensor([0.25])
        >>> path.interpolate(x1, z, t), path.velocity(x1, z, t)
        (tensor([[0.2500, 0.2500]]), tensor([[1., 1.]]))
    """

    def __init__(
        self,
        a: Schedule,
        b: Schedule,
        *,
        da: Schedule | None = None,
        db: Schedule | None = None,
        db2: Schedule | None = None,
        name: str = "custom",
        t_max: float = 1.0,
    ) -> None:
        for label, fn in (("a", a), ("b", b), ("da", da), ("db", db), ("db2", db2)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{label} must be callable, got {type(fn).__name__}")
        self.a, self.b, self.name = a, b, str(name)
        self._da, self._db, self._db2 = da, db, db2
        self.t_max = positive("t_max", t_max)
        if self.t_max > 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max!r}")
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        got = {"a(0)": a(ends)[0], "a(1)": a(ends)[1], "b(0)": b(ends)[0], "b(1)": b(ends)[1]}
        want = {"a(0)": 0.0, "a(1)": 1.0, "b(0)": 1.0, "b(1)": 0.0}
        bad = {k: float(v) for k, v in got.items() if abs(float(v) - want[k]) > _BOUNDARY_TOL}
        if bad:
            raise ValueError(f"a Gaussian interpolant needs a(0)=0, a(1)=1, b(0)=1, b(1)=0, got {bad}")

    def __repr__(self) -> str:
        return f"GaussianInterpolant(name={self.name!r}, t_max={self.t_max})"

    @staticmethod
    def _derivative(fn: Schedule, t: Tensor) -> Tensor:
        # Schedules act elementwise, so the gradient of the sum is the derivative at each time.
        with torch.enable_grad():
            u = t.detach().requires_grad_(True)
            out = fn(u)
            if not out.requires_grad:  # a constant schedule
                return torch.zeros_like(t)
            (grad,) = torch.autograd.grad(out.sum(), u)
        return grad

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(a(t), b(t), a'(t), b'(t))`` for times ``t`` of any shape."""
        da = self._da(t) if self._da is not None else self._derivative(self.a, t)
        db = self._db(t) if self._db is not None else self._derivative(self.b, t)
        return self.a(t), self.b(t), da, db

    def interpolate(self, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``x_t = a(t) x1 + b(t) z``; ``x1``, ``z`` of shape ``(batch, d)``, ``t`` of shape ``(batch,)``."""
        a, b, _, _ = self.coefficients(t.unsqueeze(-1))
        return a * x1 + b * z

    def velocity(self, x1: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """The conditional velocity ``d x_t / dt = a'(t) x1 + b'(t) z`` (the flow-matching target)."""
        _, _, da, db = self.coefficients(t.unsqueeze(-1))
        return da * x1 + db * z

    def at_sigma(self, x: Tensor, z: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """The same path in the ``sigma = 1 - t`` convention: ``(x_sigma, d x_sigma / d sigma)``."""
        t = 1.0 - sigma
        return self.interpolate(x, z, t), -self.velocity(x, z, t)

    def sample_sigma(self, n: int, *, generator: torch.Generator, like: Tensor) -> Tensor:
        """``n`` training times ``sigma = 1 - t``, ``t ~ U[0, t_max]`` (dtype and device of ``like``)."""
        u = torch.rand(n, generator=generator, dtype=like.dtype, device=like.device)
        return u if self.t_max == 1.0 else (1.0 - self.t_max) + self.t_max * u

    def gaussian_velocity(self, x: Tensor, t: Tensor, mean: Tensor | float, std: float) -> Tensor:
        r"""The marginal velocity ``E[d x_t/dt | x_t = x]`` for data ``N(mean, std^2 I)``, in closed form.

        ``x_t`` is Gaussian with mean ``a m`` and scale ``s_t = sqrt(a^2 std^2 + b^2)``, and the
        velocity is ``a' m + (s_t' / s_t) (x - a m)``: its flow maps ``z`` at ``t = 0`` to
        ``m + std z`` at ``t = 1`` (``x_t = a m + s_t z``).
        """
        t = t.reshape(-1, 1).to(x)
        a, b, da, db = self.coefficients(t)
        b_db = 0.5 * self._db2(t) if self._db2 is not None else b * db
        var = a * a * std * std + b * b
        return da * mean + (a * da * std * std + b_db) / var * (x - a * mean)


def get_interpolant(path: str | GaussianInterpolant) -> GaussianInterpolant:
    """``path`` itself, or the registered interpolant of that name (``ValueError`` listing them)."""
    if isinstance(path, GaussianInterpolant):
        return path
    return INTERPOLANTS[choice("path", path, INTERPOLANTS)]


# -- the registered paths ------------------------------------------------------------------------
_HALF_PI = 0.5 * math.pi
_COS_S = 0.008
_COS_SCALE = _HALF_PI / (1.0 + _COS_S)
_COS_0 = math.cos(_COS_S * _COS_SCALE)
_BETA_MIN, _BETA_MAX = 0.1, 20.0


def _cos_a(t: Tensor) -> Tensor:
    theta = ((1.0 - t) + _COS_S) * _COS_SCALE
    # cos(pi / 2) is 6e-17 in floating point: clamp the noise end to exactly 0.
    return torch.where(t <= 0, torch.zeros_like(t), torch.cos(theta) / _COS_0)


def _cos_da(t: Tensor) -> Tensor:
    return torch.sin(((1.0 - t) + _COS_S) * _COS_SCALE) * _COS_SCALE / _COS_0


def _vp_b(a: Schedule, da: Schedule) -> tuple[Schedule, Schedule, Schedule]:
    """``b = sqrt(1 - a^2)``, ``b'`` and ``d(b^2)/dt = -2 a a'``."""

    def b(t: Tensor) -> Tensor:
        return torch.sqrt((1.0 - a(t).square()).clamp_min(0.0))

    def db(t: Tensor) -> Tensor:
        return -a(t) * da(t) / b(t)

    return b, db, lambda t: -2.0 * a(t) * da(t)


def _log_abar(u: Tensor) -> Tensor:
    return -(_BETA_MIN * u + 0.5 * (_BETA_MAX - _BETA_MIN) * u * u)


_SQRT_ABAR_1 = math.exp(0.5 * float(_log_abar(torch.tensor(1.0, dtype=torch.float64))))
_ABAR_1 = _SQRT_ABAR_1**2


def _lin_a(t: Tensor) -> Tensor:
    return (torch.exp(0.5 * _log_abar(1.0 - t)) - _SQRT_ABAR_1) / (1.0 - _SQRT_ABAR_1)


def _lin_da(t: Tensor) -> Tensor:
    u = 1.0 - t
    beta = _BETA_MIN + (_BETA_MAX - _BETA_MIN) * u
    return 0.5 * beta * torch.exp(0.5 * _log_abar(u)) / (1.0 - _SQRT_ABAR_1)


def _lin_b(t: Tensor) -> Tensor:
    return torch.sqrt(((1.0 - torch.exp(_log_abar(1.0 - t))) / (1.0 - _ABAR_1)).clamp_min(0.0))


def _lin_db2(t: Tensor) -> Tensor:
    u = 1.0 - t
    beta = _BETA_MIN + (_BETA_MAX - _BETA_MIN) * u
    return -beta * torch.exp(_log_abar(u)) / (1.0 - _ABAR_1)


def _lin_db(t: Tensor) -> Tensor:
    return 0.5 * _lin_db2(t) / _lin_b(t)


_cos_b, _cos_db, _cos_db2 = _vp_b(_cos_a, _cos_da)

#: The registered interpolants by name (``FlowMatchingModel(path=name)``).
INTERPOLANTS: dict[str, GaussianInterpolant] = {
    p.name: p
    for p in (
        GaussianInterpolant(
            lambda t: t,
            lambda t: 1.0 - t,
            da=torch.ones_like,
            db=lambda t: -torch.ones_like(t),
            name="linear",
        ),
        GaussianInterpolant(
            lambda t: torch.sin(_HALF_PI * t),
            lambda t: torch.cos(_HALF_PI * t),
            da=lambda t: _HALF_PI * torch.cos(_HALF_PI * t),
            db=lambda t: -_HALF_PI * torch.sin(_HALF_PI * t),
            name="trig",
        ),
        GaussianInterpolant(_cos_a, _cos_b, da=_cos_da, db=_cos_db, db2=_cos_db2, name="vp", t_max=VP_T_MAX),
        GaussianInterpolant(
            _lin_a, _lin_b, da=_lin_da, db=_lin_db, db2=_lin_db2, name="vp-linear", t_max=VP_T_MAX
        ),
    )
}
