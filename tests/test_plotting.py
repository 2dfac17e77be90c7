"""Figures never switch a notebook's matplotlib backend, and are returned to the caller."""

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from jko_plugin.plotting import plot_samples, scatter_panels  # noqa: E402


def test_plots_return_the_figure_and_leave_the_backend_alone(tmp_path):
    import matplotlib.pyplot as plt

    plt.switch_backend("svg")  # stands for a notebook's inline backend
    try:
        x = torch.randn(500, 2)
        fig = plot_samples(x, x + 0.1, [x * 0.5], path=tmp_path / "s.png")
        assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        fig = scatter_panels([("a", x), ("b", torch.randn(300, 5))], title="t")
        assert [ax.get_title() for ax in fig.axes] == ["a", "b"] and plt.get_fignums() == []
    finally:
        plt.switch_backend("agg")
    with pytest.raises(ValueError, match="at least one"):
        scatter_panels([])
