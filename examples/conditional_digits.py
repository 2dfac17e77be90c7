r"""Class-conditional digits: one JKO flow whose every step is conditional on the digit's class.

A conditional JKO step is one proximal step per class ``c``,
``rho_k(. | c) = argmin KL(rho || N(0, I)) + W2^2(rho, rho_{k-1}(. | c)) / (2 h_k)``; the step's
network sees ``c`` through a learned embedding. The flow is a normflows
``ConditionalNormalizingFlow`` (``log_prob(x, labels)``, ``sample(n, labels)``), trained block-wise
by ``JKOTrainer.fit(x, context=labels)``, then wrapped in the diffusers pipeline, which samples by
label the diffusers way: ``pipe(class_labels=[3] * 8)``.

Writes ``conditional_digits/samples.png`` (one row per class: a real held-out digit, then samples)
and the pipeline in ``conditional_digits/model``; prints the conditional test NLL and how often a
scikit-learn logistic regression, trained on the real training digits, labels the samples of each
class with that class (0.96 in our run, as often as it labels real held-out digits right). The
per-step table shows the held-out conditional NLL rising after the second step: with about 144
training digits per class the later steps overfit (pick the number of steps on a validation
split for likelihoods). A few minutes on two CPU cores:

    python examples/conditional_digits.py [iterations_per_block]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from jko_plugin import JKOFlowPipeline
from jko_plugin.datasets import load_labelled, split_labels, train_test_split
from jko_plugin.metrics import nll
from jko_plugin.workflows import default_config, train_flow

OUT = Path("conditional_digits")
PER_CLASS = 10


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Undo ``datasets.digits``' standardisation (by the dequantised pixels' exact mean and
    standard deviation), back to 8x8 images in [0, 1]."""
    raw = load_digits().data
    mean = (raw.mean(0) + 0.5) / 17
    std = np.sqrt(raw.var(0) / 289 + 1 / (12 * 289))
    return np.clip(x.numpy() * std + mean, 0, 1).reshape(-1, 8, 8)


def main(iterations: int = 300) -> None:
    x, y = load_labelled("digits", seed=0)
    train, test = train_test_split(torch.cat([x, y[:, None].float()], 1), 0.2, seed=0)
    (x_train, y_train), (x_test, y_test) = split_labels(train, -1), split_labels(test, -1)

    config = default_config("spline", num_classes=10, iterations=iterations, seed=0)
    flow, history, seconds, scheduler = train_flow(
        x_train, x_test, config, context=y_train, context_test=y_test, progress=True
    )
    print(f"trained {len(history.blocks)} conditional steps in {seconds:.0f} s")
    print(f"conditional test NLL -log p(x | class): {nll(flow, x_test, context=y_test):.2f} nats")

    pipe = JKOFlowPipeline.from_normflows(flow, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    OUT.mkdir(exist_ok=True)
    pipe.save_pretrained(OUT / "model")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    samples = pipe(class_labels=labels, generator=gen).samples

    judge = LogisticRegression(max_iter=5000).fit(x_train.numpy(), y_train.numpy())
    said = torch.from_numpy(judge.predict(samples.numpy()))
    print(
        f"logistic regression on the real held-out digits: {judge.score(x_test.numpy(), y_test.numpy()):.3f}"
    )
    for c in range(10):
        print(f"  class {c}: {float((said[labels == c] == c).double().mean()):.2f} of samples labelled {c}")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(PER_CLASS + 1, 10.6))
    axes = fig.subplots(10, PER_CLASS + 1)
    real = to_pixels(torch.stack([x_test[y_test == c][0] for c in range(10)]))
    images = to_pixels(samples)
    for c in range(10):
        row = [real[c]] + list(images[labels == c])
        for j, (ax, img) in enumerate(zip(axes[c], row)):
            ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, labelpad=10)
    axes[0][0].set_title("real", fontsize=9)
    axes[0][1].set_title("samples ->", fontsize=9)
    fig.suptitle("class-conditional JKO flow on 8x8 digits: pipe(class_labels=...)")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.02, top=0.93, wspace=0.1, hspace=0.1)
    fig.savefig(OUT / "samples.png", dpi=80)
    print(f"wrote {OUT / 'samples.png'} and {OUT / 'model'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
