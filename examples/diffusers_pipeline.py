"""Train a small JKO flow on two moons, sample it as a diffusers pipeline, save, reload, plot.

    python examples/diffusers_pipeline.py            # about a minute on 2 CPU cores
    python examples/diffusers_pipeline.py --iterations 100 --out /tmp/jko   # a quicker look

Writes OUT/pipeline/ (model_index.json, model/, scheduler/: safetensors + JSON, no pickle) and
OUT/diffusers_pipeline.png (data, samples, samples from the reloaded pipeline, log-density).
"""

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jko_plugin import JKOTrainer, make_flow  # noqa: E402
from jko_plugin.sampling.pipeline import JKOFlowPipeline  # noqa: E402
from jko_plugin.sampling.scheduler import JKOScheduler  # noqa: E402


def two_moons(n: int, seed: int) -> torch.Tensor:
    """Two moons with noise 0.05, standardised as (x - (0.5, 0.25)) / (0.87, 0.5)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, math.pi, n)
    upper = rng.random(n) < 0.5
    xs = np.where(upper, np.cos(t), 1 - np.cos(t))
    ys = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([xs, ys], 1)
    pts = pts + 0.05 * rng.standard_normal((n, 2))
    return torch.tensor((pts - [0.5, 0.25]) / [0.87, 0.5], dtype=torch.float32)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=Path("demo_out/diffusers_pipeline"))
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=250, help="gradient steps per block")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = two_moons(6000, seed=0)

    # 1. The proximal step schedule (a diffusers scheduler) and a flow of ODE blocks, trained block-wise.
    # Both default to 3 RK4 steps per block: the pipeline samples the map that was trained.
    scheduler = JKOScheduler(num_blocks=args.blocks, h0=0.5, growth=1.4)
    flow = make_flow(2, args.blocks, block="ode", hidden=(64, 64))
    start = time.perf_counter()
    trainer = JKOTrainer(flow, scheduler, iterations=args.iterations, batch_size=512, lr=3e-3, progress=False)
    history = trainer.fit(x)
    print(history.summary())
    print(f"trained {args.blocks} blocks in {time.perf_counter() - start:.1f} s")

    # 2. The same weights as a diffusers pipeline: model (velocity fields) + scheduler.
    pipe = JKOFlowPipeline.from_normflows(flow, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    samples = pipe(batch_size=4000, generator=torch.Generator().manual_seed(0)).samples
    z = torch.randn(500, 2)
    with torch.no_grad():
        gap = (pipe(latents=z).samples - flow.forward(z)).abs().max().item()
    print(f"pipeline vs normflows flow.forward on the same latents: max |diff| = {gap:.2e}")

    # 3. Save, reload (works offline: HF_HUB_OFFLINE=1), sample again with the same generator.
    pipe.save_pretrained(args.out / "pipeline")
    reloaded = JKOFlowPipeline.from_pretrained(args.out / "pipeline")
    reloaded.set_progress_bar_config(disable=True)
    again = reloaded(batch_size=4000, generator=torch.Generator().manual_seed(0)).samples
    print(f"reloaded pipeline, same generator: max |diff| = {(again - samples).abs().max().item():.1e}")

    # 4. Plot data, samples, reloaded samples and the exact log-density log p(x).
    grid = torch.linspace(-2.5, 2.5, 80)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    logp = reloaded.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(gx.shape)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    panels = [(x[:4000], "data"), (samples, "JKOFlowPipeline samples"), (again, "from_pretrained")]
    for ax, (pts, title) in zip(axes, panels):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
        ax.set_title(title)
    axes[3].imshow(logp.exp().numpy(), extent=(-2.5, 2.5, -2.5, 2.5), origin="lower", cmap="magma")
    axes[3].set_title("density exp(pipe.log_prob(x))")
    for ax in axes:
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out / "diffusers_pipeline.png", dpi=110)
    print(f"wrote {args.out / 'diffusers_pipeline.png'}")


if __name__ == "__main__":
    main()
