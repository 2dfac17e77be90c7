r"""The comparison's few-step variants: each ODE method's velocity distilled into one flow map,
sampled in ``K`` jumps, and the regularity columns (Lipschitz estimate, W2 stability)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .._validate import positive_int
from ..metrics.regularity import block_stability, latent_stability, lipschitz_profile
from .methods import METHODS, Budget, TrainedModel

__all__ = ["REGULARITY_DELTA", "distilled_name", "parse_steps", "regularity", "trained_methods"]

#: Latent perturbation of the W2 stability column.
REGULARITY_DELTA = 0.1
#: Points of the Lipschitz estimate (its paths) and of the stability measurement.
_LIPSCHITZ_POINTS, _STABILITY_POINTS = 256, 1000


def parse_steps(steps: str | Sequence[int] | None) -> tuple[int, ...]:
    """Step counts ``K`` from ``"1,2,4"`` or a sequence (``()`` for ``None`` or ``""``).

    >>> parse_steps("1,2,4")
    (1, 2, 4)

    Raises:
        ValueError: A count that is not a positive integer, or a repeated one.
    """
    if steps is None:
        return ()
    if isinstance(steps, str):
        parts = [p.strip() for p in steps.split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError as err:
            raise ValueError(f"steps must be comma-separated positive integers, got {steps!r}") from err
    else:
        values = list(steps)
    out = tuple(positive_int("steps entry", k) for k in values)
    if len(set(out)) != len(out):
        raise ValueError(f"steps must not repeat a count, got {list(out)}")
    return out


def distilled_name(method: str, steps: int) -> str:
    """The comparison's name of ``method``'s ``steps``-jump flow-map sampler, e.g. ``cfm@4``."""
    return f"{method}@{steps}"


def _variants(teacher: TrainedModel, steps: tuple[int, ...], budget: Budget, seed: int) -> list[TrainedModel]:
    from ..distill import DISTILL_LOSSES, distill_flow_map

    loss = DISTILL_LOSSES[0]  # the default, Eulerian
    model, history = distill_flow_map(
        teacher.velocity, steps=budget.steps, budget_seconds=budget.seconds, loss=loss, seed=seed
    )
    model.eval()
    out = []
    for k in steps:
        out.append(
            TrainedModel(
                model,
                lambda n, gen, k=k: model.sample(n, steps=k, generator=gen),
                None,  # a flow map has no tractable density
                k,
                history.seconds,
                history.steps,
                {"teacher_train_seconds": teacher.train_seconds, "jumps": k, "loss": loss},
                generate=lambda z, k=k: model.sample(z.shape[0], steps=k, latents=z),
            )
        )
    return out


def trained_methods(
    names: Sequence[str],
    x_train: Tensor,
    x_test: Tensor,
    budget: Budget,
    seed: int,
    distill: tuple[int, ...] = (),
    verbose: bool = False,
) -> Iterator[tuple[str, TrainedModel]]:
    """Train each method in turn and yield ``(name, model)``; after an ODE method (one with a
    velocity), with ``distill`` step counts, its flow map distilled with the same budget, once per
    ``K`` as ``method@K``."""
    for method in names:
        if verbose:
            print(f"training {method} ...", flush=True)
        torch.manual_seed(seed)
        result = METHODS[method].train(x_train, x_test, budget, seed)
        yield method, result
        if distill and result.velocity is not None:
            if verbose:
                print(f"distilling {method} into a flow map ...", flush=True)
            for k, variant in zip(distill, _variants(result, distill, budget, seed)):
                yield distilled_name(method, k), variant


def regularity(result: TrainedModel, dim: int, seed: int) -> dict:
    """The regularity figures of a trained model: ``lipschitz`` (the largest estimate along the
    path, normalised time) and its profile where it has a velocity (per block for a JKO flow,
    with each block's own W2 stability); ``w2_stability`` (W2 ratio under a latent translation of
    ``REGULARITY_DELTA``) where it has latents."""
    gen = torch.Generator().manual_seed(seed + 11)
    p = next(result.module.parameters())
    z = torch.randn(_STABILITY_POINTS, dim, generator=gen, dtype=p.dtype, device=p.device)
    out: dict = {"lipschitz": None, "w2_stability": None}
    if result.velocity is not None:
        profile = lipschitz_profile(result.velocity, z[:_LIPSCHITZ_POINTS], num_times=16)
        out.update(lipschitz=profile.lipschitz, lipschitz_profile=profile.to_dict())
        if len(profile.per_piece) > 1:
            blocks = block_stability(result.velocity, z, delta=REGULARITY_DELTA, generator=gen)
            out["block_stability"] = [b.to_dict() for b in blocks]
    if result.generate is not None:
        stab = latent_stability(result.generate, z, delta=REGULARITY_DELTA, generator=gen)
        out.update(w2_stability=stab.w2_ratio, stability=stab.to_dict())
    return out
