"""Figures of the full profile: relearning curves over steps and over k, resurgence against trace, loss surfaces, interpolation."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402

from halluc_bench.config import RunConfig  # noqa: E402
from halluc_bench.report.full_rows import BASE, ModelRecords  # noqa: E402


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)


def _legend(axes) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")


def _method_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["model"] != BASE]


def _by_model(rows: list[dict]) -> dict[str, list[dict]]:
    """Group rows by model name, in first-seen order, so that the repeats of a method share one line."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["model"], []).append(row)
    return groups


def _mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float], list[float]]:
    """Return x, mean y and sample SD of y (0 for one curve) over the curves, at the x values all of them share."""
    shared = sorted(set.intersection(*(set(x for x, _ in curve) for curve in curves))) if curves else []
    means, spreads = [], []
    for x in shared:
        values = [y for curve in curves for cx, y in curve if cx == x and math.isfinite(y)]
        means.append(statistics.fmean(values) if values else math.nan)
        spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    return shared, means, spreads


def _plot_mean(axes, curves: list[list[tuple[float, float]]], label: str, **style) -> None:
    """Plot the mean of ``curves``, with SD error bars when there is more than one."""
    x, mean, spread = _mean_curve(curves)
    if not x:
        return
    if len(curves) > 1:
        axes.errorbar(x, mean, yerr=spread, capsize=3, label=f"{label} (n={len(curves)})", **style)
    else:
        axes.plot(x, mean, label=label, **style)


def plot_relearning_curves(rows: list[dict], records: dict, config: RunConfig, path: Path) -> None:
    """Plot CHAIR_i against relearning steps (the main sample count) per method, mean ± SD over repeats."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, own in _by_model(_method_rows(rows)).items():
        curves = []
        for row in own:
            model = ModelRecords(records, row["seed"], method)
            points = [(0, row["chair_i"])]
            for steps in config.relearn_steps:
                record = model.get(f"relearn/k={config.relearn_samples}/steps={steps}")
                if record is not None:
                    points.append((steps, record["chair"]["chair_i"]))
            curves.append(points)
        _plot_mean(axes, curves, method, marker="o")
    axes.axhline(records[f"{BASE}/eval"]["chair"]["chair_i"], color="grey", linestyle="--", label="base model")
    axes.set_xlabel("relearning steps")
    axes.set_ylabel("CHAIR_i")
    axes.set_title(f"Hallucination after relearning on {config.relearn_samples} captions")
    _legend(axes)
    _save(figure, path)


def plot_resurgence_vs_samples(rows: list[dict], config: RunConfig, path: Path) -> None:
    """Plot CHAIR_i resurgence after the longest relearning run against the attacker's sample count k."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    plotted = False
    for method, own in _by_model(_method_rows(rows)).items():
        curves = [[(int(k), value) for k, value in row["relearn_resurgence_by_samples"].items() if math.isfinite(value)]
                  for row in own]
        curves = [curve for curve in curves if curve]
        _plot_mean(axes, curves, method, marker="o")
        plotted = plotted or bool(curves)
    axes.axhline(1.0, color="grey", linestyle="--", label="back to the base model")
    if plotted:
        axes.set_xscale("log", base=2)
    else:
        axes.text(0.5, 0.5, "undefined for every model:\nunlearning erased nothing", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_xlabel("hallucinated captions the attacker relearns on (k)")
    axes.set_ylabel(f"CHAIR_i resurgence after {config.relearn_steps[-1]} steps")
    axes.set_title("Resurgence against the attacker's data")
    _legend(axes)
    _save(figure, path)


def plot_resurgence_vs_trace(rows: list[dict], path: Path) -> None:
    """Scatter the Hutchinson trace of each chosen model against its resurgence, a color per method; collapsed hollow."""
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    targets = (("resurgence", "CHAIR_i resurgence after relearning"),
               ("relearn_probability_resurgence", "p(hallucinated) resurgence after relearning"))
    groups = _by_model(_method_rows(rows))
    single = all(len(own) == 1 for own in groups.values())
    for axes, (field, label) in zip(panels, targets):
        plotted = 0
        for index, (method, own) in enumerate(groups.items()):
            color = f"C{index % 10}"
            points = [row for row in own if math.isfinite(row["hessian_trace"]) and math.isfinite(row[field])]
            for position, row in enumerate(points):
                face = "none" if row["collapsed"] else color
                axes.scatter(row["hessian_trace"], row[field], facecolors=face, edgecolors=color,
                             label=method if position == 0 else None)
                if single:
                    axes.annotate(method, (row["hessian_trace"], row[field]), fontsize="small",
                                  xytext=(3, 3), textcoords="offset points")
            plotted += len(points)
        if not plotted:
            axes.text(0.5, 0.5, "undefined for every model:\nunlearning erased nothing", ha="center",
                      va="center", transform=axes.transAxes)
        axes.set_xlabel("Hessian trace of the forget loss (Hutchinson)")
        axes.set_ylabel(label)
    if not single:
        _legend(panels[1])
    figure.suptitle("Sharpness against resurgence (one point per method and seed)")
    _save(figure, path)


def plot_loss_surfaces(rows: list[dict], records: dict, path: Path) -> None:
    """Plot the forget loss along a filter-normalised random direction, per model mean ± SD over repeats."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for model, own in _by_model(rows).items():
        curves = []
        for row in own:
            record = ModelRecords(records, row["seed"], model).get("probe/surface")
            if record is not None:
                curves.append(list(zip(record["surface"]["alphas"], record["surface"]["losses"])))
        _plot_mean(axes, curves, model, linestyle="--" if model == BASE else "-")
    axes.set_xlabel("alpha (filter-normalised direction)")
    axes.set_ylabel("forget loss (NLL of hallucinated mentions)")
    axes.set_title("1-D loss surfaces")
    _legend(axes)
    _save(figure, path)


def plot_interpolation(rows: list[dict], records: dict, path: Path) -> None:
    """Plot the forget loss along base -> unlearned -> relearned per method, mean ± SD over repeats."""
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    names = ["base", "unlearned", "relearned"]
    for method, own in _by_model(_method_rows(rows)).items():
        curves = []
        for row in own:
            record = ModelRecords(records, row["seed"], method).get("probe/interpolation")
            if record is not None:
                names = record["interpolation"]["names"]
                curves.append(list(zip(record["interpolation"]["positions"], record["interpolation"]["losses"])))
        _plot_mean(axes, curves, method)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names)
    axes.set_ylabel("forget loss (NLL of hallucinated mentions)")
    axes.set_title("Linear interpolation between checkpoints")
    _legend(axes)
    _save(figure, path)


def write_full_figures(root: Path, rows: list[dict], records: dict, config: RunConfig) -> dict[str, Path]:
    """Write the five PNG figures into ``root`` and return their paths by name."""
    paths = {
        "figure": root / "relearning.png",
        "scatter": root / "resurgence_vs_trace.png",
        "surfaces": root / "loss_surfaces.png",
        "interpolation": root / "interpolation.png",
        "samples": root / "resurgence_vs_samples.png",
    }
    plot_relearning_curves(rows, records, config, paths["figure"])
    plot_resurgence_vs_trace(rows, paths["scatter"])
    plot_loss_surfaces(rows, records, paths["surfaces"])
    plot_interpolation(rows, records, paths["interpolation"])
    plot_resurgence_vs_samples(rows, config, paths["samples"])
    return paths
