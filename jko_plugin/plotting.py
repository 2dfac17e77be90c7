r"""Figures: scatter panels of samples. Built on ``matplotlib.figure.Figure``, so no backend is switched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

__all__ = ["plot_samples", "scatter_panels"]


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
