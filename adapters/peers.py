r"""The real flow-matching libraries as comparison peers: torchcfm and Meta's ``flow_matching``.

Both train our ``FlowMatchingModel`` (the same MLP as the ``cfm`` method) inside the peers' budgeted
Adam loop (``fit_budgeted``); only the library differs:

- torchcfm (MIT; Tong et al. 2024): ``ConditionalFlowMatcher`` (I-CFM) or
  ``ExactOptimalTransportConditionalFlowMatcher`` (OT-CFM) draws ``(t, x_t, u_t)``. Install with
  ``pip install POT && pip install --no-deps torchcfm`` (its top level needs POT only; its other
  requirements, torchdyn among them, would pull the vision package that breaks diffusers).
- ``flow_matching`` (Meta; its metadata says CC-BY-NC: optional, never vendored; ``pip install
  'jko-plugin[fm]'``): ``CondOTProbPath`` draws ``(x_t, dx_t)``; samples come from its
  ``ODESolver.sample`` and log-likelihoods from ``ODESolver.compute_likelihood`` (exact divergence).

Both libraries run time ``t`` from 0 (noise) to 1 (data); our model's ``sigma = 1 - t`` runs from
data to noise (diffusers' convention), so the model learns ``dx/dsigma = -u_t``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np
import torch
from jko_plugin.adapters.budget import FitHistory, TrainingBudget, check_validation_rows, fit_budgeted
from jko_plugin.adapters.flow_matching import FlowMatchingModel, validation_loss
from torch import Tensor

from jko_plugin._ops import standard_normal_log_prob
from jko_plugin._validate import positive_int

__all__ = [
    "INSTALL_HINTS",
    "fit_flow_matching_lib",
    "fit_torchcfm",
    "flow_matching_log_prob",
    "flow_matching_sample",
    "require",
]

#: How to install each optional package a comparison method needs, by import name.
INSTALL_HINTS = {
    "ot": "pip install POT",
    "torchcfm": "pip install POT && pip install --no-deps torchcfm",
    "flow_matching": "pip install 'jko-plugin[fm]' (Meta's flow_matching; licence CC-BY-NC)",
    "torchdiffeq": "pip install torchdiffeq",
}


def require(package: str) -> ModuleType:
    """Import ``package`` or raise ``ImportError`` naming the command that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        hint = INSTALL_HINTS.get(package, f"pip install {package}")
        raise ImportError(f"{package} is not installed: {hint} ({err})") from err


def _budgeted(
    model: FlowMatchingModel,
    x: Tensor,
    batch_loss: object,
    *,
    steps: int | None,
    budget_seconds: float | None,
    lr: float,
    seed: int,
    x_val: Tensor | None,
) -> FitHistory:
    budget = TrainingBudget(steps, budget_seconds)
    if x.dim() != 2 or x.shape[1] != model.dim:
        raise ValueError(f"x must have shape (n, {model.dim}), got {tuple(x.shape)}")
    validate = None
    if x_val is not None:
        check_validation_rows(x_val, model.dim)

        # Both libraries train the linear path, so our FlowMatchingModel.loss on fixed draws is
        # their loss (up to torchcfm's OT pairing, left out: the independent pairs are a proxy);
        # no RNG is touched, so the training draws are those of a run without validation.
        def validate() -> float:
            return validation_loss(model, x_val, seed=seed)

    # torchcfm draws its OT minibatch pairing from numpy's global generator: seeded, then restored.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fit_budgeted(model, batch_loss, budget, lr=lr, lr_schedule="cosine", validate=validate)
    finally:
        np.random.set_state(state)


def fit_torchcfm(
    model: FlowMatchingModel,
    x: Tensor,
    *,
    ot: bool = False,
    steps: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    x_val: Tensor | None = None,
) -> FitHistory:
    """Train ``model`` in place on ``x`` with torchcfm's matcher (``ot=True``: exact minibatch OT).

    Args:
        model: A ``FlowMatchingModel`` with the linear path (torchcfm's ``sigma = 0`` path).
        x: Training data ``(n, d)``.
        ot: ``ExactOptimalTransportConditionalFlowMatcher`` instead of ``ConditionalFlowMatcher``.
        steps, budget_seconds: The budget (at least one; whichever ends first).
        batch_size: Minibatch size (data drawn with replacement); lr: Adam, cosine decay.
        seed: Seeds minibatches, noise, times and the OT pairing.
        x_val: Validation rows ``(m, d)``: the state with the lowest flow-matching loss on them
            (``adapters.flow_matching.validation_loss``, fixed draws seeded by ``seed``) at 20
            checks over the budget is kept.

    Raises:
        ImportError: torchcfm (or POT) is missing; the message gives the install command.
    """
    torchcfm = require("torchcfm")
    if model.path != "linear":
        raise ValueError(f"torchcfm's matchers train the linear path, got model.path={model.path!r}")
    positive_int("batch_size", batch_size)
    cls = torchcfm.ExactOptimalTransportConditionalFlowMatcher if ot else torchcfm.ConditionalFlowMatcher
    matcher = cls(sigma=0.0)
    p = next(model.parameters())
    x = x.to(dtype=p.dtype, device=p.device)

    def batch_loss() -> Tensor:
        x1 = x[torch.randint(0, x.shape[0], (batch_size,), device=p.device)]
        x0 = torch.randn_like(x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        return (model.velocity(xt, 1.0 - t) + ut).square().sum(-1).mean()

    return _budgeted(
        model, x, batch_loss, steps=steps, budget_seconds=budget_seconds, lr=lr, seed=seed, x_val=x_val
    )


def fit_flow_matching_lib(
    model: FlowMatchingModel,
    x: Tensor,
    *,
    steps: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    x_val: Tensor | None = None,
) -> FitHistory:
    """Train ``model`` in place on ``x`` with Meta ``flow_matching``'s ``CondOTProbPath``.

    Arguments as ``fit_torchcfm``. Raises ``ImportError`` naming the install command if
    ``flow_matching`` is missing.
    """
    require("flow_matching")
    from flow_matching.path import CondOTProbPath

    if model.path != "linear":
        raise ValueError(f"CondOTProbPath is the linear path, got model.path={model.path!r}")
    positive_int("batch_size", batch_size)
    path = CondOTProbPath()
    p = next(model.parameters())
    x = x.to(dtype=p.dtype, device=p.device)

    def batch_loss() -> Tensor:
        x1 = x[torch.randint(0, x.shape[0], (batch_size,), device=p.device)]
        x0 = torch.randn_like(x1)
        t = torch.rand(batch_size, dtype=p.dtype, device=p.device)
        sample = path.sample(x_0=x0, x_1=x1, t=t)
        return (model.velocity(sample.x_t, 1.0 - t) + sample.dx_t).square().sum(-1).mean()

    return _budgeted(
        model, x, batch_loss, steps=steps, budget_seconds=budget_seconds, lr=lr, seed=seed, x_val=x_val
    )


def _solver(model: FlowMatchingModel) -> object:
    require("flow_matching")
    from flow_matching.solver import ODESolver

    def u(x: Tensor, t: Tensor) -> Tensor:  # the library's time: t = 1 - sigma
        return -model.velocity(x, 1.0 - t)

    return ODESolver(velocity_model=u)


@torch.no_grad()
def flow_matching_sample(
    model: FlowMatchingModel,
    n: int,
    *,
    steps: int = 12,
    method: str = "rk4",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` samples from ``flow_matching``'s ``ODESolver.sample``: noise at ``t = 0`` integrated to
    data at ``t = 1`` with ``steps`` fixed steps of torchdiffeq's ``method`` (RK4: 4 NFE a step)."""
    positive_int("steps", steps)
    p = next(model.parameters())
    where = generator.device if generator is not None else p.device
    z = torch.randn(n, model.dim, generator=generator, dtype=p.dtype, device=where).to(p.device)
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=p.dtype, device=p.device)
    return _solver(model).sample(x_init=z, step_size=None, method=method, time_grid=grid)


def flow_matching_log_prob(
    model: FlowMatchingModel, x: Tensor, *, steps: int = 64, method: str = "rk4"
) -> Tensor:
    """``log p(x)``, shape ``(n,)``, from ``flow_matching``'s ``ODESolver.compute_likelihood``
    (exact divergence; data at ``t = 1`` integrated back to ``N(0, I)`` at ``t = 0``)."""
    positive_int("steps", steps)
    p = next(model.parameters())
    x = x.to(dtype=p.dtype, device=p.device)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=p.dtype, device=p.device)
    _, log_p = _solver(model).compute_likelihood(
        x_1=x,
        log_p0=standard_normal_log_prob,
        step_size=None,
        method=method,
        time_grid=grid,
        exact_divergence=True,
    )
    return log_p.detach()
