r"""A small reference flow-matching trainer on any Gaussian interpolant: I-CFM / rectified flow,
OT-CFM, trigonometric and variance-preserving paths.

Time convention (diffusers' ``FlowMatchEulerDiscreteScheduler``): ``sigma`` runs from 0 (data) to
1 (noise ``z ~ N(0, I)``); the network predicts ``dx/dsigma``. The path is a
``jko_plugin.interpolants.GaussianInterpolant`` (``x_t = a(t) x + b(t) z`` with ``t = 1 - sigma``),
given by its registered name (``INTERPOLANTS``) or as an object:

- ``"linear"``: ``x_sigma = (1 - sigma) x + sigma z``, target ``z - x`` (I-CFM with
  ``sigma_min = 0``, i.e. rectified flow; Lipman et al. 2023, Liu et al. 2023, Tong et al. 2024);
- ``"trig"``: ``x_sigma = cos(pi sigma / 2) x + sin(pi sigma / 2) z``, target its derivative: the
  variance-preserving trigonometric interpolant (Albergo & Vanden-Eijnden 2023);
- ``"vp"``, ``"vp-linear"``: variance-preserving diffusion paths (cosine and linear beta schedules).

With ``coupling="ot"`` each minibatch of data is paired with its noise by an exact optimal
transport plan (POT's ``ot.emd``, squared Euclidean cost): OT-CFM (Tong et al. 2024).

``FlowMatchingModel.forward(sample, timestep)`` takes diffusers' timesteps (``1000 * sigma``), so
the model can be sampled by ``FlowMatchEulerDiscreteScheduler`` through any pipeline with the
``(sample, timestep) -> velocity`` contract, e.g. ``sample_with_scheduler`` below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from jko_plugin.adapters.budget import (
    LR_SCHEDULES,
    FitHistory,
    TrainingBudget,
    check_validation_rows,
    fit_budgeted,
    lr_factor,
)
from torch import Tensor, nn

from jko_plugin._validate import check_batch, check_timestep, choice, positive_int
from jko_plugin.interpolants import INTERPOLANTS, GaussianInterpolant, get_interpolant
from jko_plugin.sampling.model import VelocityOutput
from jko_plugin.sampling.ode import ode_log_prob, sample_ode
from jko_plugin.steps.context import ContextEncoder
from jko_plugin.steps.velocity import VelocityMLP

__all__ = [
    "COUPLINGS",
    "LR_SCHEDULES",
    "PATHS",
    "FitHistory",
    "FlowMatchingModel",
    "TrainingBudget",
    "fit_flow_matching",
    "lr_factor",
    "ot_pairing",
    "sample_with_scheduler",
    "validation_loss",
]

#: Names of the registered interpolants (``jko_plugin.interpolants.INTERPOLANTS``).
PATHS = tuple(INTERPOLANTS)
COUPLINGS = ("independent", "ot")
#: Validation rows scored by ``validation_loss`` (the first ones); ``validation_split`` holds out
#: at most as many.
VALIDATION_ROWS = 2000


def ot_pairing(x: Tensor, z: Tensor) -> Tensor:
    """Permutation ``perm`` such that ``(x[i], z[perm[i]])`` is an exact OT pairing (squared
    Euclidean cost) of two equal-size batches; needs POT (``pip install POT``)."""
    try:
        import ot
    except ImportError as err:
        raise ImportError("coupling='ot' needs POT for exact OT: pip install POT") from err
    if x.shape != z.shape:
        raise ValueError(f"x and z must have the same shape, got {tuple(x.shape)} and {tuple(z.shape)}")
    cost = torch.cdist(x.detach().double(), z.detach().double()).square().cpu().numpy()
    n = x.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=torch.float64).numpy()
    plan = ot.emd(w, w, cost, numItermax=1_000_000)
    # Equal uniform marginals: the optimal vertex is a permutation matrix.
    return torch.from_numpy(plan.argmax(axis=1)).to(x.device)


class FlowMatchingModel(ModelMixin, ConfigMixin):
    """A flow-matching velocity field ``v(x, sigma) = dx/dsigma`` on ``R^d`` (MLP) with sampling and NLL.

    A diffusers model: ``forward(sample, timestep)`` with ``timestep = sigma * num_train_timesteps``,
    a registered config, ``save_pretrained`` / ``from_pretrained`` (safetensors); so
    ``JKOFlowPipeline(model=model, scheduler=FlowMatchEulerDiscreteScheduler())`` samples it.

    Args:
        dim: Data dimension.
        hidden: Hidden widths of the MLP.
        activation: ``"silu"`` (default), ``"tanh"``, ``"softplus"`` or ``"elu"``.
        path: A registered interpolant's name (``"linear"``, ``"trig"``, ``"vp"``, ``"vp-linear"``)
            or a ``GaussianInterpolant``; the config saves its name, so a saved model reloads
            when that name is in ``INTERPOLANTS``.
        num_train_timesteps: Scale of diffusers timesteps: ``timestep = sigma * num_train_timesteps``.
        num_classes, context_dim, embed_dim: A conditional field ``v(x, sigma, c)`` (as a JKO
            step's, ``ContextEncoder``): class labels through a learned embedding, or a continuous
            context; ``forward`` then takes ``class_labels=`` or ``encoder_hidden_states=`` (the
            diffusers keywords) and ``loss``, ``sample``, ``log_prob`` and ``fit_flow_matching``
            take ``context=``.

    Example:
        >>> model = FlowMatchingModel(2)
        >>> history = fit_flow_matching(model, torch.randn(256, 2), steps=5, batch_size=64)
        >>> model.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    @register_to_config
    def __init__(
        self,
        dim: int = 2,
        hidden: Sequence[int] = (64, 64, 64),
        activation: str = "silu",
        path: str | GaussianInterpolant = "linear",
        num_train_timesteps: int = 1000,
        num_classes: int | None = None,
        context_dim: int | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.interpolant = get_interpolant(path)
        path = self.interpolant.name
        self.register_to_config(path=path)
        positive_int("num_train_timesteps", num_train_timesteps)
        self.context_encoder = ContextEncoder(
            context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim
        )
        self.net = VelocityMLP(
            dim,
            tuple(hidden),
            activation=activation,
            time_dependent=True,
            context_dim=self.context_encoder.features,
        )
        self.dim = dim
        self.path = path
        self.num_train_timesteps = num_train_timesteps

    def velocity(self, x: Tensor, sigma: float | Tensor, context: Tensor | None = None) -> Tensor:
        """``dx/dsigma``; ``x`` of shape ``(batch, d)``, ``sigma`` a float or ``(batch,)`` in [0, 1]."""
        return self.net(x, sigma, self.context_encoder(context, x))

    def forward(
        self,
        sample: Tensor,
        timestep: float | Tensor,
        class_labels: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        return_dict: bool = True,
    ) -> VelocityOutput | tuple[Tensor]:
        """diffusers' contract: velocity at ``timestep = sigma * num_train_timesteps``, a number, a
        one-element tensor or one per row ``(batch,)`` (conditional: ``class_labels`` or
        ``encoder_hidden_states``, one row per sample); ``VelocityOutput`` or ``(velocity,)``."""
        check_batch(sample, self.dim, "sample")
        t = check_timestep(timestep, sample.shape[0])
        context = class_labels if class_labels is not None else encoder_hidden_states
        v = self.velocity(sample, t / self.num_train_timesteps, context)
        return VelocityOutput(sample=v) if return_dict else (v,)

    def interpolate(self, x: Tensor, z: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Path point ``x_sigma`` and target ``d x_sigma / d sigma``, for ``sigma`` of shape ``(batch,)``."""
        return self.interpolant.at_sigma(x, z, sigma)

    def loss(self, x: Tensor, z: Tensor, sigma: Tensor, context: Tensor | None = None) -> Tensor:
        """Conditional flow-matching loss ``mean |v(x_sigma, sigma[, c]) - target|^2``."""
        xs, target = self.interpolate(x, z, sigma)
        return (self.velocity(xs, sigma, context) - target).square().sum(-1).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        steps: int = 32,
        solver: str = "euler",
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """``n`` samples: ``latents`` (default ``N(0, I)`` from ``generator``) integrated from sigma 1 to 0
        (``context``: one row per sample for a conditional model).

        NFE per sample: ``steps`` times the solver's stages (1 Euler, 2 Heun, 4 RK4).
        """
        p = next(self.parameters())
        if latents is None:
            where = generator.device if generator is not None else p.device  # then moved, as diffusers does
            latents = torch.randn(n, self.dim, generator=generator, dtype=p.dtype, device=where).to(p.device)
        c = self.context_encoder(context, latents)
        return sample_ode(lambda x, s: self.net(x, s, c), latents, steps=steps, solver=solver)

    @torch.no_grad()
    def log_prob(
        self, x: Tensor, *, steps: int = 64, solver: str = "rk4", context: Tensor | None = None
    ) -> Tensor:
        """Exact log-likelihood (exact divergence from forward-mode tangents), shape ``(n,)``;
        ``log p(x | c)`` with ``context`` for a conditional model.

        The only error is the ODE solver's: with RK4 it falls as ``steps^-4`` (see ``ode_log_prob``).
        """
        c = self.context_encoder(context, x)
        if c is None:
            return ode_log_prob(self.net.forward_with_trace, x, steps=steps, solver=solver)
        return ode_log_prob(
            lambda y, s: self.net.forward_with_trace(y, s, None, c),
            x,
            steps=steps,
            solver=solver,
            chunk_size=len(x),
        )


def fit_flow_matching(
    model: FlowMatchingModel,
    x: Tensor,
    *,
    coupling: str = "independent",
    steps: int | None = None,
    budget_seconds: float | None = None,
    batch_size: int = 512,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    seed: int = 0,
    log_every: int = 100,
    context: Tensor | None = None,
    x_val: Tensor | None = None,
    context_val: Tensor | None = None,
) -> FitHistory:
    """Train ``model`` in place by conditional flow matching on the rows of ``x``.

    Args:
        model: The velocity model.
        x: Training data ``(n, d)``.
        coupling: ``"independent"`` (I-CFM / rectified flow) or ``"ot"`` (OT-CFM; needs POT).
        steps: Gradient steps; ``budget_seconds``: wall-clock budget. At least one; training stops
            at whichever comes first.
        batch_size: Minibatch size (data drawn with replacement).
        lr: Adam learning rate; ``lr_schedule``: ``"constant"`` or ``"cosine"`` decay to 0 at the
            end of the budget.
        seed: Seeds the minibatches, noise and times (the model's initial weights are the
            caller's: seed ``torch.manual_seed`` before building it).
        log_every: Record the loss every this many steps.
        context: For a conditional model, the rows' labels ``(n,)`` or contexts ``(n, m)``,
            drawn with their rows. Not with ``coupling="ot"``: pairing a batch across contexts
            would make the noise depend on ``c``, and the model's latent would not be ``N(0, I)``
            given ``c``.
        x_val, context_val: Validation rows ``(m, d)`` (and their contexts, for a conditional
            model): the state with the lowest ``validation_loss`` (seeded by ``seed``) at 20 checks
            over the budget is kept (``fit_budgeted``'s ``validate``).

    Returns:
        ``FitHistory``.
    """
    choice("coupling", coupling, COUPLINGS)
    choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    budget = TrainingBudget(steps, budget_seconds)
    if x.dim() != 2 or x.shape[1] != model.dim:
        raise ValueError(f"x must have shape (n, {model.dim}), got {tuple(x.shape)}")
    positive_int("batch_size", batch_size)
    if coupling == "ot":
        ot_pairing(x[:2], x[:2])  # raises ImportError now, not after the first step, without POT
    p = next(model.parameters())
    x = x.to(dtype=p.dtype, device=p.device)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    model.context_encoder.check(context, x.shape[0])  # a missing or bad context fails here
    if context is not None and coupling == "ot":
        raise ValueError("coupling='ot' pairs noise across contexts: use coupling='independent' with context")
    if context is not None:
        context = context.to(device=p.device, dtype=None if not context.is_floating_point() else p.dtype)

    def batch_loss() -> Tensor:
        rows = torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=p.device)
        xb = x[rows]
        z = torch.randn(xb.shape, generator=gen, dtype=p.dtype, device=p.device)
        if coupling == "ot":
            z = z[ot_pairing(xb, z)]
        sigma = model.interpolant.sample_sigma(batch_size, generator=gen, like=xb)
        return model.loss(xb, z, sigma, None if context is None else context[rows])

    validate = None
    if x_val is not None:
        check_validation_rows(x_val, model.dim)
        model.context_encoder.check(context_val, x_val.shape[0], "context_val")  # fails now, not later

        # The training loss on fixed draws, not a validation NLL (ODE solves at every check would
        # eat the budget); with coupling="ot" the validation pairs are independent (a proxy).
        def validate() -> float:
            return validation_loss(model, x_val, seed=seed, context=context_val)

    return fit_budgeted(
        model, batch_loss, budget, lr=lr, lr_schedule=lr_schedule, log_every=log_every, validate=validate
    )


@torch.no_grad()
def validation_loss(
    model: FlowMatchingModel, x: Tensor, *, seed: int = 0, context: Tensor | None = None
) -> float:
    """The flow-matching loss ``model.loss`` on the first ``VALIDATION_ROWS`` rows of ``x`` ``(m, d)``
    with noise and times drawn from a generator seeded by ``seed`` on every call: the same draws
    each time, so scores of one model across training are comparable. Always the independent
    coupling (an OT-CFM model is scored on the same pairs: a proxy, as its training pairs are OT
    minibatch pairings). A validation NLL would need ODE solves, too much of the budget per check.
    """
    check_validation_rows(x, model.dim)
    p = next(model.parameters())
    x = x[:VALIDATION_ROWS].to(dtype=p.dtype, device=p.device)
    if context is not None:
        context = context[:VALIDATION_ROWS].to(
            device=p.device, dtype=None if not context.is_floating_point() else p.dtype
        )
    model.context_encoder.check(context, x.shape[0])
    gen = torch.Generator(device=p.device).manual_seed(seed)
    z = torch.randn(x.shape, generator=gen, dtype=p.dtype, device=p.device)
    sigma = model.interpolant.sample_sigma(x.shape[0], generator=gen, like=x)
    return float(model.loss(x, z, sigma, context))


@torch.no_grad()
def sample_with_scheduler(
    model: nn.Module,
    scheduler: object,
    latents: Tensor,
    *,
    num_inference_steps: int = 32,
) -> Tensor:
    """The diffusers sampling loop: ``model(sample, timestep)`` stepped by a flow-matching scheduler.

    Works with ``diffusers.FlowMatchEulerDiscreteScheduler`` (sigma 1 -> 0) or any scheduler with
    ``set_timesteps``, ``timesteps`` and ``step(model_output, timestep, sample).prev_sample``.
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    sample = latents
    for t in scheduler.timesteps:
        out = model(sample, t)
        sample = scheduler.step(getattr(out, "sample", out), t, sample).prev_sample
    return sample
