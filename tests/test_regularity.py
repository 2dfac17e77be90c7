"""Regularity diagnostics against closed forms: Lipschitz estimates of linear fields, W2 stability of
linear maps, per block for piecewise (JKO) fields; the compare columns and figure."""

import json
import math

import normflows as nf
import pytest
import torch

from jko_plugin import JKOBlock
from jko_plugin.compare import compare, format_table
from jko_plugin.metrics import block_stability, latent_stability, lipschitz_profile
from jko_plugin.sampling import VelocityField

matplotlib = pytest.importorskip("matplotlib")

A = torch.tensor([[0.3, 2.0], [-0.5, -1.0]], dtype=torch.float64)


def test_lipschitz_estimate_of_a_linear_field_is_its_spectral_norm():
    z = torch.randn(64, 2, dtype=torch.float64)
    norm = float(torch.linalg.matrix_norm(A, ord=2))
    prof = lipschitz_profile(VelocityField([(0.0, 1.0, lambda x, t: x @ A.T)], dim=2), z, num_times=8)
    assert prof.times[0] == 1.0 and prof.times[-1] == 0.0 and len(prof.times) == 9
    for value in prof.max + prof.mean + prof.per_piece:
        assert value == pytest.approx(norm, rel=1e-12)
    # on an axis [0, T] the estimate is per unit of normalised time: T ||A||_2
    prof = lipschitz_profile(VelocityField([(0.0, 2.5, lambda x, t: x @ A.T)], dim=2), z, num_times=4)
    assert prof.lipschitz == pytest.approx(2.5 * norm, rel=1e-12)


def test_lipschitz_per_piece_of_a_piecewise_field():
    B = torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    field = VelocityField([(0.0, 0.5, lambda x, t: x @ A.T), (0.5, 2.0, lambda x, t: x @ B.T)], dim=2)
    prof = lipschitz_profile(field, torch.randn(16, 2, dtype=torch.float64), num_times=4)
    norm_a = float(torch.linalg.matrix_norm(A, ord=2))
    assert prof.per_piece == pytest.approx([2.0 * norm_a, 2.0 * 4.0], rel=1e-12)
    assert 0.25 in prof.times  # the boundary 0.5 on the normalised axis
    # the boundary is the data-side end of the piece above it
    assert prof.max[prof.times.index(0.25)] == pytest.approx(8.0, rel=1e-12)
    assert prof.max[-1] == pytest.approx(2.0 * norm_a, rel=1e-12)


def test_lipschitz_of_a_jko_flow_is_measured_per_block():
    torch.manual_seed(0)
    flows = [JKOBlock(2, (8,), interval=(0.5, 1.2)), JKOBlock(2, (8,), interval=(0.0, 0.5))]
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows).double()
    prof = lipschitz_profile(flow, torch.randn(32, 2, dtype=torch.float64), num_times=6)
    assert len(prof.per_piece) == 2 and all(v > 0 for v in prof.per_piece)
    # block 1's estimate at an interior time by autograd, independently
    x = torch.randn(5, 2, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda u: flows[1].velocity_at(u[None], 0.2)[0], x[0])
    field = VelocityField.from_model(flow)
    with torch.enable_grad():
        u = x[:1].clone().requires_grad_(True)
        v = field(u, 0.2)
        rows = torch.stack([torch.autograd.grad(v[0, i], u, retain_graph=True)[0][0] for i in range(2)])
    torch.testing.assert_close(rows, J)


def test_stability_of_linear_generators_is_the_stretch():
    z = torch.randn(400, 2, dtype=torch.float64)
    stab = latent_stability(lambda z: 3.0 * z, z, delta=0.05, generator=torch.Generator().manual_seed(0))
    assert stab.w2_ratio == pytest.approx(3.0, rel=1e-9) and stab.rms_ratio == pytest.approx(3.0, rel=1e-12)
    assert stab.w2_ratio_max == pytest.approx(3.0, rel=1e-9)
    # a generator that ignores the latent is perfectly stable; a rotation has stretch 1
    assert latent_stability(lambda z: torch.zeros_like(z), z).w2_ratio == 0.0
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert latent_stability(lambda z: z @ rot.T, z).rms_ratio == pytest.approx(1.0, rel=1e-12)


def test_block_stability_of_scalar_linear_blocks():
    """dx/dt = a_k x on block k: going down its interval of length h_k multiplies by exp(-a_k h_k)."""
    field = VelocityField([(0.0, 0.5, lambda x, t: 2.0 * x), (0.5, 1.5, lambda x, t: -1.0 * x)], dim=2)
    out = block_stability(field, torch.randn(300, 2, dtype=torch.float64), delta=0.1, steps=128)
    assert out[0].rms_ratio == pytest.approx(math.exp(-1.0), rel=1e-8)
    assert out[1].rms_ratio == pytest.approx(math.exp(1.0), rel=1e-8)
    assert out[1].w2_ratio == pytest.approx(math.exp(1.0), rel=1e-6)


def test_bad_inputs():
    field = VelocityField([(0.0, 1.0, lambda x, t: x)], dim=2)
    with pytest.raises(ValueError, match="latents has dimension 3, the model's is 2"):
        lipschitz_profile(field, torch.randn(4, 3))
    with pytest.raises(ValueError, match="delta must be finite and > 0"):
        latent_stability(lambda z: z, torch.randn(4, 2), delta=-1.0)
    with pytest.raises(ValueError, match="num_times must be a positive integer"):
        lipschitz_profile(field, torch.randn(4, 2), num_times=0)


def test_compare_reports_interpolants_distilled_maps_and_regularity(tmp_path):
    records = compare(
        "moons",
        "jko,trig,realnvp",
        steps=6,
        distill="1,2",
        regularity_columns=True,
        num_train=300,
        num_test=100,
        num_samples=300,
        seed=1,
        out=tmp_path,
    )
    by = {r["method"]: r for r in records}
    assert list(by) == ["jko", "jko@1", "jko@2", "trig", "trig@1", "trig@2", "realnvp"]
    # jko samples its exact map in 2-D (x4: reverse solve, 2 Newton steps, log-det; 3 RK4 steps of
    # 4 stages each); a distilled map 1 or 2
    kept = by["jko"]["details"]["kept_steps"]  # the steps up to the best validation NLL
    assert [by[m]["nfe"] for m in by] == [48 * kept, 1, 2, 48, 1, 2, 8]
    for name in ("jko@1", "trig@2"):
        r = by[name]
        assert r["test_nll"] is None and r["errors"] == [] and r["w2"] > 0 and r["train_steps"] == 6
        assert r["lipschitz"] is None and r["w2_stability"] > 0
    assert by["trig"]["details"]["path"] == "trig" and by["trig"]["test_nll"] is not None
    assert len(by["jko"]["details"]["regularity"]["lipschitz_profile"]["per_piece"]) == kept
    assert len(by["jko"]["details"]["regularity"]["block_stability"]) == kept
    assert by["realnvp"]["lipschitz"] is None and by["realnvp"]["w2_stability"] > 0
    table = format_table(records)
    assert "Lip. est." in table and "| trig@2 | - |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in saved] == list(by)
    assert (tmp_path / "lipschitz.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_lipschitz_returns_the_figure_and_keeps_the_backend(tmp_path):
    import matplotlib.pyplot as plt

    from jko_plugin.plotting import plot_lipschitz

    plt.switch_backend("svg")
    try:
        prof = lipschitz_profile(
            VelocityField([(0.0, 1.0, lambda x, t: x @ A.T)], dim=2), torch.randn(8, 2, dtype=torch.float64)
        )
        fig = plot_lipschitz({"a": prof, "b": prof.to_dict()}, title="t", path=tmp_path / "l.png")
        assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes[0].lines) == 2
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    finally:
        plt.switch_backend("agg")
    with pytest.raises(ValueError, match="at least one"):
        plot_lipschitz({})
