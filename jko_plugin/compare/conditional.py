r"""The conditional comparison: methods that take class labels, scored by ``log p(x | c)`` and class-wise W2.

``compare_conditional(dataset, methods, budget_seconds=S)`` trains every method of
``CONDITIONAL_METHODS`` (``compare.conditional_methods``) named in ``methods`` on labelled points
``(x, c)`` (a built-in labelled dataset, ``datasets.get_labelled``, or a file with a label
column), each with the same budget, and scores them on the same held-out pairs. As in
``compare``, every method makes its choices (a JKO flow its steps and their iterates, flow matching
its checkpoint) on the same rows held out of the training pairs (``selection_rows``), never on the
pairs it is scored on:

- ``test_nll``: the conditional NLL ``-mean log p(x | c)`` (exact change of variables; flow
  matching by its exact-divergence ODE, 64 RK4 steps), and where the dataset's conditional density
  is known ``true_nll`` and the gap, also per dimension;
- ``w2``: the class-conditional W2, per class ``c`` from as many samples drawn for ``c`` as there
  are held-out points of class ``c`` (up to ``w2_points``) to those points, averaged over the
  classes with equal weights (``w2_per_class`` keeps each); ``w2_floor`` the same from training
  points of the class;
- ``label_accuracy``: where the Bayes classifier is known (mixtures, moons), or with a
  ``classifier`` trained on the real training pairs, the share of samples drawn for class ``c``
  that it assigns to ``c``, averaged over classes; ``data_label_accuracy`` the same for the
  held-out points themselves (its ceiling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .._validate import positive_int
from ..datasets import DEFAULT_TRAIN_SIZE, get_labelled, load_samples, split_labels, train_test_split
from ..metrics import checked_wasserstein2
from ..steps.normalize import Standardize
from .conditional_methods import (
    CONDITIONAL_METHODS,
    DEFAULT_CONDITIONAL_METHODS,
    ConditionalModel,
)
from .methods import Budget
from .runner import format_table, spent_words, write_report

__all__ = ["CONDITIONAL_COLUMNS", "compare_conditional"]


def _load(
    dataset: str | Path, labels: int | None, num_train: int, num_test: int, seed: int
) -> tuple[str, Tensor, Tensor, Tensor, Tensor, object]:
    """``(name, x_train, y_train, x_test, y_test, LabelledDataset or None)``."""
    path = Path(str(dataset))
    if path.suffix.lower() in (".npy", ".csv"):
        if labels is None:
            raise ValueError(f"a conditional comparison on {path.name} needs the label column (--labels K)")
        train, test = train_test_split(load_samples(path), 0.2, seed=seed)
        (x_train, y_train), (x_test, y_test) = split_labels(train, labels), split_labels(test, labels)
        return path.name, x_train[:num_train], y_train[:num_train], x_test[:num_test], y_test[:num_test], None
    if labels is not None:
        raise ValueError(f"labels (a column index) is for data files; {dataset!r} comes labelled")
    ds = get_labelled(str(dataset))
    if ds.size is not None:  # split 80/20 as compare splits a fixed-size dataset, labels with their rows
        x, y = ds.sample(ds.size, seed=seed)
        train, test = train_test_split(torch.cat([x, y.unsqueeze(1).to(x.dtype)], dim=1), 0.2, seed=seed)
        (x_train, y_train), (x_test, y_test) = split_labels(train, -1), split_labels(test, -1)
        return ds.name, x_train[:num_train], y_train[:num_train], x_test[:num_test], y_test[:num_test], ds
    x_train, y_train = ds.sample(num_train, seed=seed)
    x_test, y_test = ds.sample(num_test, seed=seed + 1)
    return ds.name, x_train, y_train, x_test, y_test, ds


def _names(methods: str | Sequence[str]) -> list[str]:
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    names = [m for m in names if m]
    if not names or any(m not in CONDITIONAL_METHODS for m in names) or len(set(names)) != len(names):
        raise ValueError(
            f"methods must name distinct methods that take a context, among {list(CONDITIONAL_METHODS)}, "
            f"got {methods!r}"
        )
    return names


@torch.no_grad()
def _conditional_nll(model: ConditionalModel, x: Tensor, y: Tensor, chunk: int = 4096) -> float | None:
    total = sum(
        float(-model.log_prob(xb, yb).double().sum()) for xb, yb in zip(x.split(chunk), y.split(chunk))
    )
    value = total / x.shape[0]
    return value if torch.isfinite(torch.tensor(value)) else None


@torch.no_grad()
def _classwise(
    model: ConditionalModel,
    predict: Callable[[Tensor], Tensor] | None,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    w2_points: int,
    label_samples: int,
    seed: int,
) -> dict:
    """Class-conditional W2 (and its floor) per class, and a classifier's accuracy on samples."""
    gen = torch.Generator().manual_seed(seed + 7)
    w2, floor, accuracy, data_accuracy, notes = {}, {}, {}, {}, []
    for c in torch.unique(y_test).tolist():
        ref = x_test[y_test == c][:w2_points]
        own = x_train[y_train == c][: ref.shape[0]]
        n = max(ref.shape[0], label_samples if predict is not None else 0)
        samples = model.sample(torch.full((n,), c, dtype=torch.long), gen)
        finite = bool(torch.isfinite(samples).all())
        if ref.shape[0] >= 2:
            w2[c], note = (
                checked_wasserstein2(samples[: ref.shape[0]], ref, f"class {c}'s W2")
                if finite
                else (None, None)
            )
            floor[c], floor_note = (
                checked_wasserstein2(own, ref, f"class {c}'s W2 floor")
                if own.shape[0] == ref.shape[0]
                else (None, None)
            )
            notes += [m for m in (note, floor_note) if m]
        if predict is not None and finite:
            accuracy[c] = float((predict(samples) == c).double().mean())
            data_accuracy[c] = float((predict(x_test[y_test == c]) == c).double().mean())

    def mean(values: dict) -> float | None:
        known = list(values.values())
        return None if not known or None in known else sum(known) / len(known)

    return {
        "w2": mean(w2),
        "w2_floor": mean(floor),
        "w2_per_class": w2,
        "label_accuracy": mean(accuracy),
        "label_accuracy_per_class": accuracy,
        "data_label_accuracy": mean(data_accuracy),
        "warnings": notes,
    }


def _in_data_units(model: ConditionalModel, norm: Standardize) -> ConditionalModel:
    def sample(c: Tensor, gen: torch.Generator) -> Tensor:
        return norm.forward(model.sample(c, gen))[0]

    def log_prob(x: Tensor, c: Tensor) -> Tensor:
        z, log_det = norm.inverse(x)
        return model.log_prob(z, c) + log_det

    module = nn.ModuleDict({"norm": norm, "model": model.module})
    return dataclasses.replace(model, module=module, sample=sample, log_prob=log_prob)


CONDITIONAL_COLUMNS = (
    ("method", "method", "{}"),
    ("test_nll", "cond. NLL", "{:.3f}"),
    ("nll_gap", "gap to true", "{:+.3f}"),
    ("w2", "class W2", "{:.4f}"),
    ("w2_floor", "W2 floor", "{:.4f}"),
    ("label_accuracy", "label acc.", "{:.3f}"),
    ("train_seconds", "train s", "{:.1f}"),
    ("train_steps", "grad steps", "{}"),
    ("params", "params", "{}"),
    ("nfe", "NFE", "{}"),
)


def compare_conditional(
    dataset: str | Path,
    methods: str | Sequence[str] = DEFAULT_CONDITIONAL_METHODS,
    *,
    labels: int | None = None,
    budget_seconds: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    num_train: int | None = None,
    num_test: int = 4000,
    w2_points: int = 2000,
    standardize: bool = True,
    classifier: Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]] | None = None,
    label_samples: int = 1000,
    verbose: bool = False,
) -> list[dict]:
    """Train the conditional ``methods`` on labelled data with one budget; score them on the same
    held-out pairs (see the module docstring).

    Args:
        dataset: A labelled dataset (``get_labelled``: ``moons``, ``8gaussians``, ``gmm<d>``,
            ``digits``) or a ``.npy`` / ``.csv`` file whose column ``labels`` holds the classes
            (split 80/20 with their rows).
        methods: Comma-separated names or a sequence, among ``CONDITIONAL_METHODS``.
        labels: The label column of a data file (negative counts from the end).
        budget_seconds, steps: Exactly one: wall-clock seconds or gradient steps per method.
        seed: Seeds data, weights, batches and samples.
        out: Folder for ``table.md`` and ``results.json`` (``None``: none).
        num_train, num_test: Training and held-out points (caps for files and fixed-size data;
            ``num_train=None``: ``DEFAULT_TRAIN_SIZE``).
        w2_points: Held-out points per class (at most) for the class-wise W2.
        standardize: Give every method the data standardised on the training split (the labels
            untouched) and score in data units, as ``compare`` does.
        classifier: ``fit(x_train, y_train) -> predict``, a classifier trained here on the real
            training pairs (data units), whose ``predict(x) -> labels`` then scores
            ``label_accuracy`` instead of the Bayes classifier (which only datasets of known
            density have): e.g. scikit-learn's ``LogisticRegression`` on digits.
        label_samples: Samples drawn per class for ``label_accuracy``.
        verbose: Print progress and the table.

    Returns:
        One record per method.

    Raises:
        ValueError: Unknown method or dataset, a file without ``labels``, a bad budget.
    """
    names = _names(methods)
    budget = Budget(budget_seconds, steps)
    num_train = DEFAULT_TRAIN_SIZE if num_train is None else num_train
    for name, v in (("num_train", num_train), ("num_test", num_test), ("w2_points", w2_points)):
        positive_int(name, v, minimum=2)
    positive_int("label_samples", label_samples)
    label, x_train, y_train, x_test, y_test, ds = _load(dataset, labels, num_train, num_test, seed)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    dim = x_train.shape[1]
    cond_log_prob = getattr(ds, "conditional_log_prob", None)
    true_nll = float(-cond_log_prob(x_test, y_test).double().mean()) if cond_log_prob is not None else None
    norm = Standardize.fit(x_train, warn=False) if standardize else None
    predict, judge = None, None
    if classifier is not None:
        predict, judge = classifier(x_train, y_train), "the given classifier, fitted on the training pairs"
    elif getattr(ds, "posterior", None) is not None:
        predict, judge = (lambda x: ds.posterior(x).argmax(1)), "the Bayes classifier (true posterior)"
    records = []
    for method in names:
        if verbose:
            print(f"[{label}, conditional] training {method} ...", flush=True)
        torch.manual_seed(seed)
        inputs = (x_train, x_test) if norm is None else (norm.inverse(x_train)[0], norm.inverse(x_test)[0])
        result = CONDITIONAL_METHODS[method].train(
            inputs[0], y_train, inputs[1], y_test, num_classes, budget, seed
        )
        result = result if norm is None else _in_data_units(result, norm)
        result.module.eval()
        test_nll = _conditional_nll(result, x_test, y_test)
        known = test_nll is not None and true_nll is not None
        record = {
            "method": method,
            "dataset": label,
            "dim": dim,
            "num_classes": num_classes,
            "test_nll": test_nll,
            "true_nll": true_nll,
            "nll_gap": test_nll - true_nll if known else None,
            "nll_gap_per_dim": (test_nll - true_nll) / dim if known else None,
            **_classwise(result, predict, x_train, y_train, x_test, y_test, w2_points, label_samples, seed),
            "label_classifier": judge,
            "train_seconds": result.train_seconds,
            "train_steps": result.train_steps,
            "params": sum(p.numel() for p in result.module.parameters() if p.requires_grad),
            "nfe": result.nfe,
            "budget_seconds": budget_seconds,
            "budget_steps": steps,
            "seed": seed,
            "standardized": norm is not None,
            "num_train": int(x_train.shape[0]),
            "num_test": int(x_test.shape[0]),
            "details": result.details,
        }
        records.append(record)
        if verbose:
            print(format_table([record], CONDITIONAL_COLUMNS).splitlines()[-1], flush=True)
            for m in record["warnings"]:
                print(f"warning: {m}", flush=True)
    table = format_table(records, CONDITIONAL_COLUMNS)
    if verbose:
        print(table)
    if out is not None:
        header = (
            f"{label} (d = {dim}, {num_classes} classes), conditional, {x_train.shape[0]} train / "
            f"{x_test.shape[0]} held-out points, budget {spent_words(budget_seconds, steps)} per method, "
            f"seed {seed}" + ("" if true_nll is None else f"; true conditional test NLL {true_nll:.3f}")
        )
        write_report(out, header, table, records)
    return records
