r"""Per-block diagnostics of block-wise JKO training, and the entropy estimate behind the KL figure."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

__all__ = ["BlockRecord", "StepEvent", "TrainingHistory", "conditional_knn_entropy", "knn_entropy"]


@dataclass
class BlockRecord:
    """Diagnostics of one trained JKO step (block ``index``, 1 = the data side).

    Attributes:
        index: Position in the data -> noise order, from 1.
        step_size: The proximal step size ``h_k``.
        potential: ``E|T(x)|^2 / 2`` on the training data (the ``-log q`` part of the loss, less a constant).
        neg_log_det: ``E[-log|det dT(x)|]`` on the training data.
        transport: The proximal term, ``E|T(x) - x|^2 / (2 h_k)`` (or the kinetic-energy version).
        loss: Their sum, the JKO objective.
        w2_movement: ``sqrt(E|T(x) - x|^2)``, an upper bound on ``W2(rho_{k-1}, rho_k)``.
        movement_ratio: ``E|T(x) - x|^2 / E|T(x)|^2``, the stopping rule's statistic.
        kl_estimate: Estimate of ``KL(rho_k || N(0, I))`` on held-out data (see ``TrainingHistory``).
        nll: Held-out negative log-likelihood in nats of the flow cut after this block (ODE
            blocks with ``density="ode"``: the ODE's own density, ``ode_density_of``).
        inversion_error: Mean ``|T^{-1}(T(x)) - x|`` on held-out data.
        seconds: Wall time to train the block (pushing the data forward included).
        iterations: Training iterations the block took (0 in histories saved before this field;
            fewer than planned when ``step_patience`` stopped it).
        kept_iteration: The iterations behind the weights kept: ``iterations`` unless within-step
            early stopping (``step_checks``) kept an earlier iterate.
    """

    index: int
    step_size: float
    potential: float
    neg_log_det: float
    transport: float
    loss: float
    w2_movement: float
    movement_ratio: float
    kl_estimate: float
    nll: float
    inversion_error: float
    seconds: float
    iterations: int = 0
    kept_iteration: int = 0

    @classmethod
    def from_sums(
        cls,
        index: int,
        step_size: float,
        sums: Sequence[float],
        nll: float,
        data_entropy: float,
        inversion_error: float,
        seconds: float,
        iterations: int = 0,
        kept_iteration: int = 0,
    ) -> BlockRecord:
        """The record of a block from the sums ``StepFitter.diagnose`` returns (``|T|^2/2``,
        ``-log|det|``, transport, ``|T(x)-x|^2``, ``|T(x)|^2`` and the count) and its held-out NLL."""
        potential, neg_log_det, transport, sq_disp, sq_norm, n = (float(s) for s in sums)
        return cls(
            index=index,
            step_size=step_size,
            potential=potential / n,
            neg_log_det=neg_log_det / n,
            transport=transport / n,
            loss=(potential + neg_log_det + transport) / n,
            w2_movement=math.sqrt(sq_disp / n),
            movement_ratio=sq_disp / max(sq_norm, 1e-300),
            kl_estimate=nll - data_entropy,
            nll=nll,
            inversion_error=inversion_error,
            seconds=seconds,
            iterations=iterations,
            kept_iteration=kept_iteration,
        )


@dataclass(frozen=True)
class StepEvent:
    """One training iteration, as ``JKOTrainer.fit(on_step=...)`` reports it (this process's batch).

    Attributes:
        block: The block being trained (1 = the data side).
        iteration: Iteration within the block, from 0.
        loss: The JKO objective on the batch, ``potential + neg_log_det + transport``.
        potential: ``E|T(x)|^2 / 2`` on the batch.
        neg_log_det: ``E[-log|det dT(x)|]`` on the batch (a Hutchinson estimate if training uses one).
        transport: The proximal term ``E|T(x) - x|^2 / (2 h)`` on the batch.
        lr: The learning rate of this iteration.
    """

    block: int
    iteration: int
    loss: float
    potential: float
    neg_log_det: float
    transport: float
    lr: float


@dataclass
class TrainingHistory:
    """What ``JKOTrainer.fit`` returns: one ``BlockRecord`` per trained step.

    The KL estimate uses that ``KL(rho_k || q) = E_{rho_0}[-log q(T(x)) - sum_{j<=k} log|det dT_j(x)|]
    - H(rho_0)``: the first part is the held-out NLL of the flow cut after block k (exact, from
    the log-determinants), the data entropy ``H(rho_0)`` is estimated once by the
    Kozachenko-Leonenko k-nearest-neighbour estimator (``data_entropy``). Differences between
    blocks are therefore exact up to sampling noise; the common offset carries the entropy
    estimator's bias, which grows with dimension.

    Conditional flows (``fit(x, context=...)``): the figure is ``E_c KL(rho_k(. | c) || q)``, the
    conditional NLL ``E[-log p_k(x | c)]`` minus the conditional entropy ``H(X | C)``
    (``conditional_knn_entropy``): for class labels the class-wise entropies averaged with the
    class frequencies, for a continuous context ``H(X, C) - H(C)``.
    """

    blocks: list[BlockRecord] = field(default_factory=list)
    data_entropy: float = float("nan")
    converged: bool = False
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (NaN becomes ``None``)."""

        def clean(v: object) -> object:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "blocks": [asdict(b) for b in self.blocks],
                "data_entropy": self.data_entropy,
                "converged": self.converged,
                "options": self.options,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> TrainingHistory:
        """Inverse of ``to_dict``."""

        def num(v: object) -> object:
            return float("nan") if v is None else v

        # Histories saved before within-step early stopping kept their last iterate.
        blocks = [
            BlockRecord(**{"kept_iteration": b.get("iterations", 0), **{k: num(v) for k, v in b.items()}})
            for b in d.get("blocks", [])
        ]
        return cls(
            blocks, float(num(d.get("data_entropy"))), bool(d.get("converged", False)), d.get("options", {})
        )

    def summary(self) -> str:
        """A plain-text table, one row per block."""
        cols = [
            ("block", "index", "d"),
            ("h", "step_size", ".3g"),
            ("loss", "loss", ".4f"),
            ("|T|^2/2", "potential", ".4f"),
            ("-logdet", "neg_log_det", ".4f"),
            ("transport", "transport", ".4f"),
            ("W2 move", "w2_movement", ".4f"),
            ("KL est", "kl_estimate", ".4f"),
            ("NLL", "nll", ".4f"),
            ("inv err", "inversion_error", ".2e"),
            ("sec", "seconds", ".1f"),
        ]
        rows = [[h for h, _, _ in cols]]
        for b in self.blocks:
            rows.append([format(getattr(b, a), f) for _, a, f in cols])
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


@torch.no_grad()
def knn_entropy(x: Tensor, k: int = 5, chunk: int = 2048) -> float:
    """Kozachenko-Leonenko estimate of the differential entropy (nats) of the sample ``x`` (n, d).

    ``H = psi(n) - psi(k) + log V_d + d * mean(log eps_i)``, ``eps_i`` the distance from ``x_i`` to
    its k-th nearest neighbour and ``V_d`` the volume of the unit d-ball. Distances are computed
    in chunks, so memory stays ``O(chunk * n)``.
    """
    n, d = x.shape
    if n <= k:
        raise ValueError(f"knn_entropy needs more than k={k} points, got {n}")
    x = x.double()
    log_eps = []
    for part in x.split(chunk):
        dist = torch.cdist(part, x)
        # k + 1 because each point is its own nearest neighbour at distance 0.
        eps = dist.topk(k + 1, dim=1, largest=False).values[:, -1]
        log_eps.append(eps.clamp_min(1e-300).log())
    log_vd = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    psi = torch.special.digamma
    return float(
        psi(torch.tensor(float(n))) - psi(torch.tensor(float(k))) + log_vd + d * torch.cat(log_eps).mean()
    )


@torch.no_grad()
def conditional_knn_entropy(x: Tensor, context: Tensor, k: int = 5) -> float:
    """Estimate of the conditional entropy ``H(X | C)`` (nats) from pairs ``(x_i, c_i)``.

    Class labels (an integer tensor ``(n,)``): ``sum_c (n_c / n) H(X | C = c)``, each class's
    entropy by ``knn_entropy`` on its own points, so the average weights the classes as the
    conditional NLL does. A class with at most ``k`` points cannot be estimated: it is left out
    (with a warning) and the weights renormalised over the others.

    A continuous context ``(n, m)``: no value repeats, so no class-wise sample exists; the chain
    rule ``H(X | C) = H(X, C) - H(C)`` is estimated instead, Kozachenko-Leonenko on the joint
    ``(x, c)`` and on ``c``. Both estimates share the ``c`` coordinates and their biases partly
    cancel; what is left grows with the joint dimension ``d + m``.
    """
    if context.is_floating_point():
        c = context.reshape(context.shape[0], -1).to(x.device)
        return knn_entropy(torch.cat([x.double(), c.double()], dim=1), k) - knn_entropy(c, k)
    labels = context.to(x.device)
    total, weight, skipped = 0.0, 0, []
    for c in torch.unique(labels).tolist():
        rows = x[labels == c]
        if rows.shape[0] <= k:
            skipped.append(c)
            continue
        total += rows.shape[0] * knn_entropy(rows, k)
        weight += rows.shape[0]
    if skipped:
        warnings.warn(
            f"classes {skipped} have at most {k} held-out points: left out of the conditional entropy "
            "behind the KL estimate",
            UserWarning,
            stacklevel=2,
        )
    return total / weight if weight else float("nan")
