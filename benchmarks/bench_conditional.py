"""Class-conditional JKO flows against the targets of issue 14, beside conditional flow matching.

1. Labelled Gaussian mixture ``gmm8`` (d = 8, 8 components, each point labelled with its
   component; 20000 train / 4000 held-out points): every method trains for the same wall-clock
   budget (120 s), then ``compare_conditional`` scores the conditional test NLL ``-log p(x | c)``
   against the true one (exact), the class-wise W2, and the share of samples drawn for class ``c``
   that the true posterior (the Bayes classifier) assigns to ``c`` (1000 samples per class).
   Targets: NLL gap <= 0.05 nats per dimension, label accuracy >= 0.98 (the held-out data itself
   reaches ``data_label_accuracy``, the ceiling: the components overlap a little).
2. Conditional digits (scikit-learn's 8x8 digits, 64-d, 1437 train / 360 held-out): a
   scikit-learn logistic regression trained on the real training digits labels 300 samples drawn
   per class; target: >= 0.90 of them labelled with their class (its accuracy on the real
   held-out digits is the ceiling).

Settings are the methods' defaults (``compare.conditional_methods``): nothing is tuned on the
held-out points. Prints a table per part, writes ``benchmarks/results/conditional.json``. About
15 minutes on two CPU cores; run it alone:

    flock /tmp/bench.lock python benchmarks/bench_conditional.py [--budget 120] [--digits-budget 120]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from jko_plugin.compare.conditional import CONDITIONAL_COLUMNS, compare_conditional
from jko_plugin.compare.runner import format_table

GMM_NLL_TARGET, GMM_LABEL_TARGET, DIGITS_LABEL_TARGET = 0.05, 0.98, 0.90


def logistic_regression(x, y):
    """The digits judge: scikit-learn's logistic regression fitted on the real training digits."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000).fit(x.numpy(), y.numpy())
    return lambda s: torch.from_numpy(clf.predict(s.detach().cpu().numpy()))


def verdict(value, target, higher_is_better):
    if value is None:
        return "no value"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else f"missed by {abs(value - target):.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per method on gmm8")
    ap.add_argument("--digits-budget", type=float, default=120.0, help="seconds per method on digits")
    ap.add_argument("--methods", default="jko-spline,jko-coupling,jko,cfm")
    ap.add_argument("--digits-methods", default="jko-spline,jko-coupling,cfm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/conditional.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    gmm = compare_conditional(
        "gmm8",
        args.methods,
        budget_seconds=args.budget,
        seed=args.seed,
        num_train=20000,
        num_test=4000,
        w2_points=500,
        label_samples=1000,
    )
    print(
        f"\ngmm8 (d = 8, 8 classes), {args.budget:g} s per method; "
        f"true conditional NLL {gmm[0]['true_nll']:.3f}"
    )
    print(format_table(gmm, CONDITIONAL_COLUMNS))
    for r in gmm:
        r["targets"] = {
            "nll_gap_per_dim": verdict(r["nll_gap_per_dim"], GMM_NLL_TARGET, False),
            "label_accuracy": verdict(r["label_accuracy"], GMM_LABEL_TARGET, True),
        }
        print(
            f"  {r['method']:>12}: gap {r['nll_gap_per_dim']:+.4f} nats/dim "
            f"({r['targets']['nll_gap_per_dim']}), label acc {r['label_accuracy']:.4f} "
            f"of ceiling {r['data_label_accuracy']:.4f} "
            f"({r['targets']['label_accuracy']})"
        )

    digits = compare_conditional(
        "digits",
        args.digits_methods,
        budget_seconds=args.digits_budget,
        seed=args.seed,
        w2_points=500,
        classifier=logistic_regression,
        label_samples=300,
    )
    print(f"\ndigits (d = 64, 10 classes), {args.digits_budget:g} s per method; judge: logistic regression")
    print(format_table(digits, CONDITIONAL_COLUMNS))
    for r in digits:
        r["targets"] = {"label_accuracy": verdict(r["label_accuracy"], DIGITS_LABEL_TARGET, True)}
        worst = min(r["label_accuracy_per_class"].items(), key=lambda kv: kv[1])
        print(
            f"  {r['method']:>12}: label acc {r['label_accuracy']:.4f} "
            f"of ceiling {r['data_label_accuracy']:.4f} ({r['targets']['label_accuracy']}); "
            f"worst class {worst[0]}: {worst[1]:.3f}"
        )
    total = time.perf_counter() - start
    print(f"\ntotal {total / 60:.1f} min")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "gmm8": gmm,
                "digits": digits,
                "targets": {
                    "gmm8_nll_gap_per_dim_max": GMM_NLL_TARGET,
                    "gmm8_label_accuracy_min": GMM_LABEL_TARGET,
                    "digits_label_accuracy_min": DIGITS_LABEL_TARGET,
                },
                "settings": vars(args),
                "total_seconds": total,
                "torch_threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
