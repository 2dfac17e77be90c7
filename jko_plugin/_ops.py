r"""Private numerics of the steps and samplers: activations with derivatives, explicit Runge-Kutta."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validate import choice, positive_int

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_SOLVER_STEPS",
    "SOLVERS",
    "Activation",
    "ButcherTableau",
    "integrate",
    "integrate_jacobian",
    "solver_nfe",
    "standard_normal_log_prob",
]


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity ``fn(u)`` and its derivative ``grad(u, fn(u))``.

    The derivative may reuse the value (``tanh' = 1 - tanh^2``), which saves a transcendental.
    """

    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor, Tensor], Tensor]


def _tanh_grad(u: Tensor, out: Tensor) -> Tensor:
    return 1.0 - out * out


def _softplus_grad(u: Tensor, out: Tensor) -> Tensor:
    return torch.sigmoid(u)


def _silu_grad(u: Tensor, out: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s * (1.0 + u * (1.0 - s))


def _elu_grad(u: Tensor, out: Tensor) -> Tensor:
    return torch.where(u > 0, torch.ones_like(u), out + 1.0)


# Derivatives are written out so that Jacobian-vector products of the velocity MLP can be
# propagated layer by layer in the same pass as the values (forward-mode by hand): this costs
# one matmul per tangent per layer and needs no double backward during training.
ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation(torch.tanh, _tanh_grad),
    "softplus": Activation(torch.nn.functional.softplus, _softplus_grad),
    "silu": Activation(torch.nn.functional.silu, _silu_grad),
    "elu": Activation(torch.nn.functional.elu, _elu_grad),
}


@dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit Runge-Kutta method (lower-triangular ``a``)."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]


SOLVERS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(a=((),), b=(1.0,), c=(0.0,)),
    "heun": ButcherTableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0)),
    "rk4": ButcherTableau(
        a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0),
        c=(0.0, 0.5, 0.5, 1.0),
    ),
}


#: Fixed solver steps per ODE block, in training and sampling alike (``JKOBlock(steps=...)``,
#: ``JKOScheduler(steps_per_block=...)``, ``RunConfig.steps``): the one owner of the count. With 2
#: RK4 steps the trained map's log-det overstated the ODE's (gmm16: 16.81 against 17.15; moons: off
#: by 1.2-3.8 nats on two seeds of three); with 3 they agree within 0.006 and the ODE scores best at
#: equal time; 4 trains 40% fewer iterations and scored 0.03 worse (BENCHMARKS.md s.4.0).
DEFAULT_SOLVER_STEPS = 3

#: RK4 steps per ODE block (at least) wherever a block that integrates its divergence
#: (``density="ode"``) is scored with the ODE's own density: the test NLL and the validation NLL
#: each step's record (and so ``keep_best_steps``) is chosen on. With 8 a two-moons density
#: integrates to 1.0000 over the plane (2 steps: 1.02).
NLL_SOLVER_STEPS = 8


def solver_nfe(steps: int, solver: str) -> int:
    """Velocity evaluations per sample for ``steps`` fixed steps of ``solver`` (RK4: 4 per step)."""
    return positive_int("steps", steps) * len(SOLVERS[choice("solver", solver, SOLVERS)].b)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per row, shape ``(batch,)``."""
    return -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


# A derivative function returns the state's rate and the rates of the scalar integrals
# carried alongside it (log-det, kinetic energy), each of shape (batch,).
Derivative = Callable[[Tensor, float], tuple[Tensor, tuple[Tensor, ...]]]


def integrate(
    func: Derivative,
    x: Tensor,
    t0: float,
    t1: float,
    steps: int,
    tableau: ButcherTableau,
    num_integrals: int,
) -> tuple[Tensor, list[Tensor]]:
    """Integrate ``dx/dt = func(x, t)`` from ``t0`` to ``t1`` (either order) in ``steps`` fixed steps.

    The scalar integrals returned by ``func`` are accumulated with the same quadrature weights,
    so they are integrals along the discrete trajectory. Returns ``(x(t1), integrals)``.
    """
    dt = (t1 - t0) / steps
    integrals = [x.new_zeros(x.shape[0]) for _ in range(num_integrals)]
    t = t0
    for _ in range(steps):
        stages: list[Tensor] = []
        stage_integrals: list[tuple[Tensor, ...]] = []
        for a_row, c in zip(tableau.a, tableau.c):
            xi = x
            for a, k in zip(a_row, stages):
                if a != 0.0:
                    xi = xi + (dt * a) * k
            k, rates = func(xi, t + c * dt)
            stages.append(k)
            stage_integrals.append(rates)
        for b, k, rates in zip(tableau.b, stages, stage_integrals):
            x = x + (dt * b) * k
            for j, r in enumerate(rates):
                integrals[j] = integrals[j] + (dt * b) * r
        t = t + dt
    return x, integrals


#: ``func(x, t) -> (dx/dt, its Jacobian (batch, d, d), rates of scalar integrals)``.
JacobianDerivative = Callable[[Tensor, float], tuple[Tensor, Tensor, tuple[Tensor, ...]]]


def integrate_jacobian(
    func: JacobianDerivative,
    x: Tensor,
    t0: float,
    t1: float,
    steps: int,
    tableau: ButcherTableau,
    num_integrals: int,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``integrate`` that also returns the Jacobian ``d x(t1) / d x(t0)`` of the discrete solver
    map, shape ``(batch, d, d)``: exact for the map the solver computes (forward-mode through the
    stages: ``K_i = J_f(x_i) (I + dt sum_j a_ij K_j)``, step Jacobian ``I + dt sum_i b_i K_i``),
    so ``log|det|`` of that map needs no divergence integral.
    """
    dt = (t1 - t0) / steps
    d = x.shape[1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(x.shape[0], d, d)
    jac = eye
    integrals = [x.new_zeros(x.shape[0]) for _ in range(num_integrals)]
    t = t0
    for _ in range(steps):
        stages: list[Tensor] = []
        stage_jacs: list[Tensor] = []
        stage_integrals: list[tuple[Tensor, ...]] = []
        for a_row, c in zip(tableau.a, tableau.c):
            xi, inner = x, eye
            for a, k, kj in zip(a_row, stages, stage_jacs):
                if a != 0.0:
                    xi = xi + (dt * a) * k
                    inner = inner + (dt * a) * kj
            k, jf, rates = func(xi, t + c * dt)
            stages.append(k)
            stage_jacs.append(jf @ inner)
            stage_integrals.append(rates)
        step_jac = eye
        for b, k, kj, rates in zip(tableau.b, stages, stage_jacs, stage_integrals):
            x = x + (dt * b) * k
            step_jac = step_jac + (dt * b) * kj
            for j, r in enumerate(rates):
                integrals[j] = integrals[j] + (dt * b) * r
        jac = step_jac @ jac
        t = t + dt
    return x, jac, integrals
