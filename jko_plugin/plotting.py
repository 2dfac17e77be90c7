r"""Figures: samples side by side, per-block training curves, Lipschitz profiles; built on
``matplotlib.figure.Figure``, so no backend is switched."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

__all__ = ["PLOT_NOTE", "can_plot", "plot_lipschitz", "plot_samples", "plot_training", "scatter_panels"]

#: What the command line prints instead of writing figures when matplotlib is missing.
PLOT_NOTE = "note: matplotlib is not installed, so no figures were written (pip install 'jko-plugin[plot]')"


def can_plot() -> bool:
    """Whether matplotlib can be imported (figures are optional: the ``plot`` extra)."""
    try:
        _figure_class()
    except ImportError:
        return False
    return True


def _figure_class() -> type:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'jko-plugin[plot]'") from err
    return Figure


def scatter_panels(
    panels: Sequence[tuple[str, Tensor]],
    *,
    limits: object = None,
    title: str | None = None,
    max_points: int = 4000,
    path: str | Path | None = None,
) -> object:
    """One scatter plot per ``(title, points)`` panel (first two coordinates), side by side.

    The figure is a plain ``matplotlib.figure.Figure``: pyplot and its backend are never touched,
    so a notebook's backend stays as it is (display the figure by evaluating it).

    Args:
        panels: ``(title, points (n, d >= 2))`` pairs.
        limits: ``((xmin, xmax), (ymin, ymax))`` shared by all panels, or a list of them (one per
            panel; ``None`` entries take the default), default: the first panel's 0.5%-99.5%
            quantiles, widened by 0.5.
        title: Figure title.
        max_points: Points drawn per panel at most.
        path: Also save the figure there (PNG, 110 dpi).

    Returns:
        The ``Figure``.
    """
    figure = _figure_class()
    if not panels:
        raise ValueError("panels must hold at least one (title, points) pair")
    ref = panels[0][1][:, :2].detach().float().cpu()
    lo = (ref.quantile(0.005, dim=0) - 0.5).tolist()
    hi = (ref.quantile(0.995, dim=0) + 0.5).tolist()
    default = ((lo[0], hi[0]), (lo[1], hi[1]))
    per_panel = isinstance(limits, list)
    fig = figure(figsize=(2.6 * len(panels), 2.9 if title else 2.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for i, (ax, (name, pts)) in enumerate(zip(axes, panels)):
        box = (limits[i] if per_panel else limits) or default
        pts = pts[:max_points].detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(*box[0])
        ax.set_ylim(*box[1])
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_samples(
    data: Tensor, samples: Tensor, pushed: Sequence[Tensor] = (), *, path: str | Path | None = None
) -> object:
    """The data, the samples and the data after each JKO step, on ``[-3.5, 3.5]^2`` (standardised
    data). Returns the ``Figure``; ``path`` also saves it."""
    panels = [("data", data), ("samples", samples)] + [
        (f"after block {k}", p) for k, p in enumerate(pushed, 1)
    ]
    return scatter_panels(panels, limits=((-3.5, 3.5), (-3.5, 3.5)), path=path)


def plot_training(history: object, *, path: str | Path | None = None) -> object:
    """Per-block training curves of a ``TrainingHistory`` (or its ``to_dict()``): the loss terms, and
    on a log scale the W2 movement ``sqrt(E|T(x) - x|^2)``, the KL estimate and the movement ratio,
    which proximal gradient descent in W2 makes fall geometrically with the block index.

    KL estimates at or below 0 (the entropy estimator's bias) cannot be drawn on a log scale and
    are left out. Returns the ``Figure``; ``path`` also saves it.
    """
    figure = _figure_class()
    blocks = history["blocks"] if isinstance(history, dict) else [vars(b) for b in history.blocks]
    if not blocks:
        raise ValueError("history has no trained block to plot")
    k = [b["index"] for b in blocks]
    fig = figure(figsize=(8.0, 3.0))
    terms, decay = fig.subplots(1, 2)
    for name, label in (
        ("loss", "JKO loss"),
        ("potential", "|T(x)|^2/2"),
        ("neg_log_det", "-log det"),
        ("transport", "|T(x)-x|^2/2h"),
    ):
        terms.plot(k, [b[name] for b in blocks], marker="o", ms=3, label=label)
    terms.set_xlabel("block")
    terms.set_title("loss terms (training data)", fontsize=9)
    terms.legend(fontsize=7)
    for name, label in (
        ("w2_movement", "W2 movement"),
        ("kl_estimate", "KL(rho_k || N(0, I)) est."),
        ("movement_ratio", "movement ratio"),
    ):
        pts = [(i, b[name]) for i, b in zip(k, blocks) if b[name] is not None and b[name] > 0]
        if pts:
            decay.plot(*zip(*pts), marker="o", ms=3, label=label)
    decay.set_yscale("log")
    decay.set_xlabel("block")
    decay.set_title("per-block decay (log scale)", fontsize=9)
    decay.legend(fontsize=7)
    for ax in (terms, decay):
        ax.set_xticks(k)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_lipschitz(
    profiles: Mapping[str, object],
    *,
    title: str | None = None,
    path: str | Path | None = None,
) -> object:
    """The Lipschitz estimate against normalised time (0 data, 1 noise), one line per method.

    Args:
        profiles: Method name to a ``metrics.regularity.LipschitzProfile`` or its ``to_dict()``
            (``times`` and ``max``).
        title: Figure title.
        path: Also save the figure there (PNG, 110 dpi).

    Returns:
        The ``Figure`` (log-scale estimate; pyplot untouched).
    """
    figure = _figure_class()
    if not profiles:
        raise ValueError("profiles must hold at least one method's profile")
    fig = figure(figsize=(5.2, 3.4))
    ax = fig.subplots()
    for name, prof in profiles.items():
        prof = prof if isinstance(prof, Mapping) else prof.to_dict()
        ax.plot(prof["times"], prof["max"], marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("normalised time (0 = data, 1 = noise)")
    ax.set_ylabel("max ||dv/dx||_2 at sample points")
    ax.legend(fontsize=8)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
