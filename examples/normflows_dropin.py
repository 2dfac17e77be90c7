r"""JKO blocks dropped into an ordinary normflows model, beside normflows' own layers.

The model is a plain ``nf.NormalizingFlow``: two RealNVP coupling layers (normflows) next to the
latent and two continuous-time ``JKOBlock`` s next to the data. It is trained in two stages:

1. ``JKOTrainer`` trains the JKO blocks block-wise (proximal steps on KL to N(0, I)); the
   coupling layers, still the identity, are applied but left alone;
2. normflows' own maximum likelihood (``forward_kld``, via ``fit_maximum_likelihood``) fine-tunes
   every layer together: the JKO blocks are normflows ``Flow`` s with an exact log-determinant,
   so gradients flow through them like through any other layer.

Everything normflows offers (``log_prob``, ``sample``, ``forward_kld``) works on the mixed model.
Writes ``normflows_dropin.png`` (data, samples after each stage, learned density). About a minute
on two CPU cores: ``python examples/normflows_dropin.py``.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import normflows as nf
import torch
from jko_plugin.adapters.normflows_baselines import fit_maximum_likelihood, sample_flow

from jko_plugin import JKOBlock, JKOTrainer
from jko_plugin.datasets import get_dataset
from jko_plugin.metrics import nll, wasserstein2


def build(dim: int = 2) -> nf.NormalizingFlow:
    """Latent side first: coupling, swap, coupling, swap, then two JKO blocks at the data side."""
    flows = []
    for _ in range(2):
        net = nf.nets.MLP([1, 64, 64, 2], init_zeros=True)  # identity at initialisation
        flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(dim, mode="swap")]
    flows += [JKOBlock(dim, (64, 64), steps=2), JKOBlock(dim, (64, 64), steps=2)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def main() -> None:
    torch.manual_seed(0)
    moons = get_dataset("moons")
    x_train, x_test = moons.sample(20000, seed=0), moons.sample(4000, seed=1)
    true_nll = float(-moons.log_prob(x_test).mean())
    model = build()
    print(model.flows)

    start = time.perf_counter()
    JKOTrainer(model, [0.5, 1.0], iterations=300, batch_size=512, lr=3e-3, seed=0, progress=False).fit(
        x_train, x_test
    )
    gen = torch.Generator().manual_seed(1)
    stage1 = sample_flow(model, 4000, generator=gen)
    report = [
        (
            "after JKOTrainer (JKO blocks)",
            nll(model, x_test),
            wasserstein2(stage1, x_test),
            time.perf_counter() - start,
        )
    ]

    start = time.perf_counter()
    fit_maximum_likelihood(model, x_train, steps=300, batch_size=512, lr=1e-3, seed=0)  # every layer
    gen = torch.Generator().manual_seed(1)
    stage2 = sample_flow(model, 4000, generator=gen)
    report.append(
        (
            "after forward_kld fine-tuning (all layers)",
            nll(model, x_test),
            wasserstein2(stage2, x_test),
            time.perf_counter() - start,
        )
    )

    print(f"true test NLL {true_nll:.3f}")
    for name, n, w, s in report:
        print(f"{name:45s} test NLL {n:.3f}  W2 {w:.3f}  ({s:.0f} s)")

    # Learned density on a grid, through normflows' log_prob.
    g = torch.linspace(-3, 3, 150)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        dens = model.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(xx.shape)
    fig, axes = plt.subplots(1, 4, figsize=(11, 2.9))
    panels = [
        ("held-out data", x_test),
        ("samples: JKO blocks trained", stage1),
        ("samples: all layers fine-tuned", stage2),
    ]
    for ax, (title, pts) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(title, fontsize=9)
    axes[3].pcolormesh(xx, yy, dens, shading="auto")
    axes[3].set_title("density (fine-tuned)", fontsize=9)
    for ax in axes:
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig("normflows_dropin.png", dpi=110)
    print("wrote normflows_dropin.png")


if __name__ == "__main__":
    main()
