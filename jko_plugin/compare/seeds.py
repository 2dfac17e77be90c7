r"""The comparison over several seeds: one ``compare`` run per seed, then the median and spread per method."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from .._validate import positive_int
from .runner import TABLE_COLUMNS, compare, write_report

__all__ = ["SUMMARY_KEYS", "compare_seeds", "format_summary", "summarize"]

#: The per-run figures summarised over seeds (median, min, max).
SUMMARY_KEYS = (
    "test_nll",
    "nll_gap",
    "w2",
    "w2_floor",
    "mmd",
    "train_seconds",
    "train_steps",
    "nfe",
    "sample_seconds",
)


def summarize(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """Per method (in the first run's order): the median, minimum and maximum of each of
    ``SUMMARY_KEYS`` over the runs where it is known, and how many runs that is.

    >>> runs = [[{"method": "a", "test_nll": v}] for v in (1.0, 3.0, 2.0)]
    >>> summarize(runs)[0]["test_nll"]
    {'median': 2.0, 'min': 1.0, 'max': 3.0, 'runs': 3}
    """
    if not runs:
        raise ValueError("summarize needs at least one run, got none")
    out = []
    for record in runs[0]:
        method = record["method"]
        rows = [r for run in runs for r in run if r["method"] == method]
        summary: dict = {"method": method, "seeds": [r.get("seed") for r in rows]}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in rows if r.get(key) is not None]
            summary[key] = (
                {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "runs": len(values),
                }
                if values
                else None
            )
        out.append(summary)
    return out


def format_summary(summary: Sequence[dict]) -> str:
    """Markdown table: each figure as ``median (min-max)`` over the seeds."""
    formats = {key: fmt for key, _, fmt in TABLE_COLUMNS}
    titles = {key: title for key, title, _ in TABLE_COLUMNS}
    keys = [k for k in SUMMARY_KEYS if any(s.get(k) is not None for s in summary)]
    lines = [
        "| method | " + " | ".join(titles[k] for k in keys) + " |",
        "|" + "|".join("---" for _ in range(len(keys) + 1)) + "|",
    ]
    for s in summary:
        cells = []
        for k in keys:
            v = s.get(k)
            if v is None:
                cells.append("-")
            else:
                fmt = formats[k]
                cells.append(f"{fmt.format(v['median'])} ({fmt.format(v['min'])} .. {fmt.format(v['max'])})")
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_seeds(
    dataset: str | Path,
    methods: str | Sequence[str],
    *,
    seeds: Sequence[int],
    out: str | Path | None = None,
    verbose: bool = False,
    **options: object,
) -> list[dict]:
    """``compare`` once per seed (each run in ``out/seed<k>``), then the median and spread per
    method (``summarize``) in ``out/table.md`` and ``out/results.json``.

    Args:
        dataset, methods: As ``compare``.
        seeds: The seeds (data, weights, batches and samples all follow the seed).
        out: Output directory (``None``: none written).
        verbose: Print progress and the tables.
        **options: The other keyword arguments of ``compare`` (budget, sizes, ...).

    Returns:
        The summary, one dict per method.
    """
    seeds = [positive_int("seed", s, minimum=0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    runs = []
    for seed in seeds:
        sub = None if out is None else Path(out) / f"seed{seed}"
        runs.append(compare(dataset, methods, seed=seed, out=sub, verbose=verbose, **options))
    summary = summarize(runs)
    table = format_summary(summary)
    if verbose:
        print(f"\nmedian (min .. max) over seeds {seeds}:\n{table}")
    if out is not None:
        head = f"{runs[0][0]['dataset']} (d = {runs[0][0]['dim']}): median (min .. max) over seeds {seeds}"
        write_report(out, head, table, {"seeds": seeds, "summary": summary, "runs": runs})
    return summary
