r"""What a conditional JKO step sees: a continuous context, or class labels through a learned embedding."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from .._validate import check_context, positive_int

__all__ = [
    "DEFAULT_MAX_EMBED_DIM",
    "ContextEncoder",
    "check_flow_context",
    "context_settings",
    "flow_context",
]

#: Class labels are embedded in ``min(num_classes, DEFAULT_MAX_EMBED_DIM)`` features by default.
DEFAULT_MAX_EMBED_DIM = 16


def context_settings(
    *, context_dim: int | None = None, num_classes: int | None = None, embed_dim: int | None = None
) -> dict:
    """The context settings checked and completed (``embed_dim``'s default filled in): ``{}`` for an
    unconditional step, ``{"context_dim": k}``, or ``{"num_classes": n, "embed_dim": e}``.

    Raises:
        ValueError: Both ``context_dim`` and ``num_classes``, ``embed_dim`` without
            ``num_classes``, or a value that is not a positive integer.

    >>> context_settings(num_classes=10)
    {'num_classes': 10, 'embed_dim': 10}
    """
    if context_dim is not None and num_classes is not None:
        raise ValueError(
            f"give context_dim (a continuous context) or num_classes (labels), not both: "
            f"got context_dim={context_dim!r}, num_classes={num_classes!r}"
        )
    if embed_dim is not None and num_classes is None:
        raise ValueError(
            f"embed_dim is the width of a label embedding and needs num_classes, got {embed_dim!r}"
        )
    if context_dim is not None:
        return {"context_dim": positive_int("context_dim", context_dim)}
    if num_classes is not None:
        num_classes = positive_int("num_classes", num_classes)
        embed_dim = min(num_classes, DEFAULT_MAX_EMBED_DIM) if embed_dim is None else embed_dim
        return {"num_classes": num_classes, "embed_dim": positive_int("embed_dim", embed_dim)}
    return {}


class ContextEncoder(nn.Module):
    r"""The context of a conditional step ``rho_k(. | c)``, turned into the features its network sees.

    A JKO step with context is one proximal step per value of the context,
    ``rho_k(. | c) = argmin KL(rho || q) + W2^2(rho, rho_{k-1}(. | c)) / (2 h_k)``: the map is
    shared, its network sees ``c``. Three cases:

    - unconditional (neither argument): no parameters, no features; a context is refused;
    - ``context_dim``: a float tensor ``(batch, context_dim)`` passed as it is;
    - ``num_classes``: integer labels ``(batch,)``, each looked up in a learned
      ``nn.Embedding(num_classes, embed_dim)`` (as diffusers' class-conditional models embed
      ``class_labels``).

    Args:
        context_dim: Features of a continuous context.
        num_classes: Number of class labels (exclusive with ``context_dim``).
        embed_dim: Width of the label embedding (default ``min(num_classes, 16)``).

    Example:
        >>> enc = ContextEncoder(num_classes=3, embed_dim=4)
        >>> enc(torch.tensor([0, 2, 2]), torch.zeros(3, 2)).shape, enc.features
        (torch.Size([3, 4]), 4)
        >>> ContextEncoder()(None, torch.zeros(5, 2)) is None
        True
    """

    def __init__(
        self, *, context_dim: int | None = None, num_classes: int | None = None, embed_dim: int | None = None
    ) -> None:
        super().__init__()
        settings = context_settings(context_dim=context_dim, num_classes=num_classes, embed_dim=embed_dim)
        self.context_dim = settings.get("context_dim")
        self.num_classes = settings.get("num_classes")
        self.embed_dim = settings.get("embed_dim")
        if self.num_classes is not None:
            self.embedding = nn.Embedding(self.num_classes, self.embed_dim)

    @property
    def conditional(self) -> bool:
        """Whether a context is expected."""
        return self.context_dim is not None or self.num_classes is not None

    @property
    def features(self) -> int:
        """Width of the encoded context (0 when unconditional)."""
        return self.context_dim or self.embed_dim or 0

    def config(self) -> dict:
        """The constructor arguments that are set (``{}`` when unconditional)."""
        keys = ("context_dim", "num_classes", "embed_dim")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def check(self, context: object, batch: int, name: str = "context") -> Tensor | None:
        """``context`` checked for ``batch`` rows (labels as ``long``); ``None`` when unconditional.

        Raises:
            ValueError: A missing context for a conditional step, a context given to an
                unconditional one, or a bad shape, dtype or label.
        """
        if not self.conditional:
            if context is not None:
                raise ValueError(
                    f"this step was built without context (no context_dim or num_classes), got a {name}"
                )
            return None
        return check_context(
            context, batch, num_classes=self.num_classes, context_dim=self.context_dim, name=name
        )

    def forward(self, context: object, x: Tensor) -> Tensor | None:
        """The features ``(batch, features)`` of the context of the rows of ``x`` (checked), in
        ``x``'s dtype and device; ``None`` when unconditional."""
        c = self.check(context, x.shape[0])
        if c is None:
            return None
        if self.num_classes is not None:
            c = self.embedding(c.to(self.embedding.weight.device))
        return c.to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def flow_context(steps: Iterable[nn.Module]) -> dict:
    """What a flow's JKO steps are conditioned on, which they must share: ``{}``,
    ``{"num_classes": n}`` or ``{"context_dim": k}``.

    Raises:
        ValueError: Steps that disagree (a flow is conditional as a whole or not at all).
    """
    found = {(s.context_encoder.num_classes, s.context_encoder.context_dim) for s in steps}
    if len(found) > 1:
        raise ValueError(
            "the flow's JKO steps disagree on their context (num_classes, context_dim): "
            f"{sorted(found, key=str)}"
        )
    if not found:
        return {}
    ((num_classes, context_dim),) = found
    return (
        {"num_classes": num_classes}
        if num_classes is not None
        else {"context_dim": context_dim}
        if context_dim
        else {}
    )


def check_flow_context(
    steps: Iterable[nn.Module], context: object, n: int, *, name: str = "context"
) -> Tensor | None:
    """The checked context of ``n`` points for a flow of these steps: ``None`` for an unconditional
    flow, else labels (``long``) or a float tensor (see ``check_context``).

    Raises:
        ValueError: A context for an unconditional flow, none for a conditional one, or a bad one.
    """
    settings = flow_context(steps)
    if not settings:
        if context is not None:
            raise ValueError(
                f"{name} was given but the flow's JKO steps take no context: build them with "
                "num_classes= (labels) or context_dim= (e.g. make_flow(d, n, num_classes=10))"
            )
        return None
    return check_context(context, n, name=name, **settings)
