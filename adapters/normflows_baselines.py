r"""normflows baselines from normflows' own layers: RealNVP and a neural spline flow, trained by ML.

Both are plain ``normflows.NormalizingFlow`` models with a fixed ``N(0, I)`` base, so every
normflows method (``log_prob``, ``sample``, ``forward_kld``) works on them unchanged.
"""

from __future__ import annotations

import math

import normflows as nf
import torch
from jko_plugin.adapters.budget import FitHistory, TrainingBudget, check_validation_rows, fit_budgeted
from torch import Tensor

from jko_plugin._validate import choice, positive_int
from jko_plugin.metrics import nll

__all__ = [
    "BASELINES",
    "base_latents",
    "fit_maximum_likelihood",
    "make_baseline",
    "make_nsf",
    "make_realnvp",
    "sample_flow",
]


def make_realnvp(
    dim: int, *, num_layers: int = 8, hidden: int = 64, hidden_layers: int = 2
) -> nf.NormalizingFlow:
    """RealNVP (Dinh et al. 2017) as in normflows' examples: ``num_layers`` x
    (``AffineCouplingBlock`` with an MLP of ``hidden_layers`` x ``hidden`` units, ``Permute('swap')``).

    The MLPs start at zero (``init_zeros=True``), so the untrained flow is the identity.
    """
    positive_int("dim", dim, minimum=2)  # coupling/autoregressive flows
    for name, v in (("num_layers", num_layers), ("hidden", hidden), ("hidden_layers", hidden_layers)):
        positive_int(name, v)
    # AffineCouplingBlock splits by chunk(2): the conditioning half has ceil(d/2) channels.
    d_in, d_out = (dim + 1) // 2, dim // 2
    flows = []
    for _ in range(num_layers):
        net = nf.nets.MLP([d_in, *([hidden] * hidden_layers), 2 * d_out], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def make_nsf(
    dim: int,
    *,
    num_layers: int = 8,
    hidden: int = 64,
    hidden_layers: int = 2,
    num_bins: int = 8,
    tail_bound: float = 3.0,
) -> nf.NormalizingFlow:
    """Neural spline flow (Durkan et al. 2019) as in normflows' examples: ``num_layers`` x
    (``AutoregressiveRationalQuadraticSpline``, ``LULinearPermute``), identity at initialisation.
    Outside ``[-tail_bound, tail_bound]`` the splines are linear: standardise the data first.
    """
    positive_int("dim", dim, minimum=2)  # coupling/autoregressive flows
    for name, v in (
        ("num_layers", num_layers),
        ("hidden", hidden),
        ("hidden_layers", hidden_layers),
        ("num_bins", num_bins),
    ):
        positive_int(name, v)
    flows = []
    for _ in range(num_layers):
        flows += [
            nf.flows.AutoregressiveRationalQuadraticSpline(
                dim, hidden_layers, hidden, num_bins=num_bins, tail_bound=tail_bound
            ),
            nf.flows.LULinearPermute(dim),
        ]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


#: Baseline name -> builder ``(dim, **options) -> nf.NormalizingFlow``.
BASELINES = {"realnvp": make_realnvp, "nsf": make_nsf}


def make_baseline(name: str, dim: int, **options: int | float) -> nf.NormalizingFlow:
    """``BASELINES[name](dim, **options)`` with a ``ValueError`` listing the choices."""
    return BASELINES[choice("name", name, BASELINES)](dim, **options)


def fit_maximum_likelihood(
    flow: nf.NormalizingFlow,
    x: Tensor,
    *,
    steps: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    seed: int = 0,
    log_every: int = 100,
    x_val: Tensor | None = None,
) -> FitHistory:
    """Train a normflows model in place by maximum likelihood (``flow.forward_kld``) with Adam.

    Args:
        flow: Any ``nf.NormalizingFlow``.
        x: Training data ``(n, d)``.
        steps, budget_seconds: Gradient steps and/or wall clock; stops at whichever comes first.
        batch_size: Minibatch size (rows drawn with replacement).
        lr, lr_schedule, weight_decay: Adam settings; ``"cosine"`` decays to 0 at the budget's end.
        max_grad_norm: Clip the gradient norm (``None``: no clipping).
        seed: Seeds the minibatches (initial weights are the caller's).
        log_every: Record the loss every this many steps.
        x_val: Validation rows ``(m, d)``: the state with the lowest validation NLL
            (``jko_plugin.metrics.nll``) at 20 checks over the budget is kept
            (``fit_budgeted``'s ``validate``).

    Returns:
        ``FitHistory``. Steps whose loss is not finite are skipped (counted, not applied).
    """
    budget = TrainingBudget(steps, budget_seconds)
    positive_int("batch_size", batch_size)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(x.shape)}")
    p = next(flow.parameters())
    x = x.to(dtype=p.dtype, device=p.device)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    validate = None
    if x_val is not None:
        check_validation_rows(x_val, x.shape[1])

        def validate() -> float:
            try:
                return nll(flow, x_val)
            except ValueError:  # a density not finite on x_val: never the checkpoint kept
                return math.inf

    def batch_loss() -> Tensor:
        xb = x[torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=p.device)]
        return flow.forward_kld(xb)

    return fit_budgeted(
        flow,
        batch_loss,
        budget,
        lr=lr,
        lr_schedule=lr_schedule,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        log_every=log_every,
        validate=validate,
    )


def base_latents(flow: nf.NormalizingFlow, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` draws ``(n, d)`` of a normflows model's ``DiagGaussian`` base, reproducible from
    ``generator``, on the base's device: what its ``forward`` maps to samples."""
    q0 = flow.q0
    if not isinstance(q0, nf.distributions.DiagGaussian):
        raise ValueError(f"sample_flow needs a DiagGaussian base, got {type(q0).__name__}")
    # Drawn where the generator lives, then moved: a CPU generator gives the same draws on any device.
    where = generator.device if generator is not None else q0.loc.device
    eps = torch.randn((n, *q0.shape), generator=generator, dtype=q0.loc.dtype, device=where).to(q0.loc.device)
    return q0.loc + torch.exp(q0.log_scale) * eps


@torch.no_grad()
def sample_flow(flow: nf.NormalizingFlow, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """``n`` samples ``(n, d)`` of a normflows model with a ``DiagGaussian`` base, reproducible from
    ``generator`` (``flow.sample`` draws from the global generator)."""
    return flow.forward(base_latents(flow, n, generator=generator))
