"""Summary of the full leaderboard over repeats: mean and standard deviation per model."""

from __future__ import annotations

import math
import statistics

import pandas as pd

from halluc_bench.report.full_rows import BASE

# Row field -> column header of the summary, in table order.
SUMMARY_FIELDS = {
    "chair_i": "CHAIR_i",
    "recall": "recall",
    "pope_adversarial_f1": "POPE adv F1",
    "relearn_chair_i": "CHAIR_i relearned",
    "resurgence": "resurgence",
    "relearn_auc": "relearn AUC",
    "benign_relearn_resurgence": "benign resurgence",
    "noise_resurgence": "noise resurgence",
    "worst_case_resurgence": "worst-case resurgence",
    "hessian_trace": "Hessian trace",
    "top_eigenvalue": "top eigenvalue",
    "epsilon_sharpness": "ε-sharpness",
}


def _finite(values: list) -> list[float]:
    return [float(value) for value in values if value is not None and math.isfinite(float(value))]


def seed_summary(rows: list[dict]) -> list[dict]:
    """Return one row per model: mean and sample SD of each summary field over the repeats.

    The base model comes first, then the methods by mean rank (unranked last). ``repeats``
    counts the model's rows, ``collapsed`` how many of them are flagged, ``mean_rank`` averages
    the ranks it got. Only finite values enter a mean, and ``{field}_n`` counts them. The SD
    is NaN with fewer than 2 values.
    """
    models = list(dict.fromkeys(row["model"] for row in rows))
    summary = []
    for model in models:
        own = [row for row in rows if row["model"] == model]
        ranks = [row["rank"] for row in own if row["rank"] is not None]
        entry = {
            "model": model,
            "repeats": len(own),
            "collapsed": sum(row["collapsed"] is True for row in own),
            "mean_rank": statistics.fmean(ranks) if ranks else math.nan,
        }
        for field in SUMMARY_FIELDS:
            values = _finite([row.get(field) for row in own])
            entry[f"{field}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{field}_sd"] = statistics.stdev(values) if len(values) > 1 else math.nan
            entry[f"{field}_n"] = len(values)
        summary.append(entry)
    methods = [entry for entry in summary if entry["model"] != BASE]
    methods.sort(key=lambda entry: (math.isnan(entry["mean_rank"]), entry["mean_rank"]))
    return [entry for entry in summary if entry["model"] == BASE] + methods


def _cell(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return ""
    if math.isnan(sd):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {sd:.2g}"


def summary_markdown(summary: list[dict]) -> str:
    """Return the summary as a Markdown table of ``mean ± SD`` cells."""
    table = []
    for entry in summary:
        row = {
            "model": entry["model"],
            "mean rank": "" if math.isnan(entry["mean_rank"]) else f"{entry['mean_rank']:.2f}",
            "collapsed": f"{entry['collapsed']} of {entry['repeats']}",
        }
        for field, header in SUMMARY_FIELDS.items():
            row[header] = _cell(entry[f"{field}_mean"], entry[f"{field}_sd"])
        table.append(row)
    return pd.DataFrame(table).to_markdown(index=False)
