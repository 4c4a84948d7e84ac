"""Figures of the full profile: relearning curves, resurgence against trace, loss surfaces, interpolation paths."""

from __future__ import annotations

import math
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


def plot_relearning_curves(rows: list[dict], records: dict, config: RunConfig, path: Path) -> None:
    """Plot CHAIR_i against relearning steps (the main sample count) for every chosen model, base as a reference."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for row in _method_rows(rows):
        model = ModelRecords(records, row["seed"], row["model"])
        points = [(0, row["chair_i"])]
        for steps in config.relearn_steps:
            record = model.get(f"relearn/k={config.relearn_samples}/steps={steps}")
            if record is not None:
                points.append((steps, record["chair"]["chair_i"]))
        axes.plot(*zip(*points), marker="o", label=row["label"])
    axes.axhline(records[f"{BASE}/eval"]["chair"]["chair_i"], color="grey", linestyle="--", label="base model")
    axes.set_xlabel("relearning steps")
    axes.set_ylabel("CHAIR_i")
    axes.set_title(f"Hallucination after relearning on {config.relearn_samples} captions")
    _legend(axes)
    _save(figure, path)


def plot_resurgence_vs_trace(rows: list[dict], path: Path) -> None:
    """Scatter the Hutchinson trace of each chosen model against its resurgence on CHAIR_i and on p; collapsed hollow."""
    figure, panels = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    targets = (("resurgence", "CHAIR_i resurgence after relearning"),
               ("relearn_probability_resurgence", "p(hallucinated) resurgence after relearning"))
    for axes, (field, label) in zip(panels, targets):
        points = [row for row in _method_rows(rows)
                  if math.isfinite(row["hessian_trace"]) and math.isfinite(row[field])]
        for row in points:
            face = "none" if row["collapsed"] else "C0"
            axes.scatter(row["hessian_trace"], row[field], facecolors=face, edgecolors="C0")
            axes.annotate(row["label"], (row["hessian_trace"], row[field]), fontsize="small",
                          xytext=(3, 3), textcoords="offset points")
        if not points:
            axes.text(0.5, 0.5, "undefined for every model:\nunlearning erased nothing", ha="center",
                      va="center", transform=axes.transAxes)
        axes.set_xlabel("Hessian trace of the forget loss (Hutchinson)")
        axes.set_ylabel(label)
    figure.suptitle("Sharpness against resurgence")
    _save(figure, path)


def plot_loss_surfaces(rows: list[dict], records: dict, path: Path) -> None:
    """Plot the forget loss along each model's filter-normalised random direction."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for row in rows:
        record = ModelRecords(records, row["seed"], row["model"]).get("probe/surface")
        if record is None:
            continue
        surface = record["surface"]
        style = "--" if row["model"] == BASE else "-"
        axes.plot(surface["alphas"], surface["losses"], style, label=row["label"])
    axes.set_xlabel("alpha (filter-normalised direction)")
    axes.set_ylabel("forget loss (NLL of hallucinated mentions)")
    axes.set_title("1-D loss surfaces")
    _legend(axes)
    _save(figure, path)


def plot_interpolation(rows: list[dict], records: dict, path: Path) -> None:
    """Plot the forget loss along base -> unlearned -> relearned for every chosen model."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    names = ["base", "unlearned", "relearned"]
    for row in _method_rows(rows):
        record = ModelRecords(records, row["seed"], row["model"]).get("probe/interpolation")
        if record is None:
            continue
        path_record = record["interpolation"]
        names = path_record["names"]
        axes.plot(path_record["positions"], path_record["losses"], label=row["label"])
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names)
    axes.set_ylabel("forget loss (NLL of hallucinated mentions)")
    axes.set_title("Linear interpolation between checkpoints")
    _legend(axes)
    _save(figure, path)


def write_full_figures(root: Path, rows: list[dict], records: dict, config: RunConfig) -> dict[str, Path]:
    """Write the four PNG figures into ``root`` and return their paths by name."""
    paths = {
        "figure": root / "relearning.png",
        "scatter": root / "resurgence_vs_trace.png",
        "surfaces": root / "loss_surfaces.png",
        "interpolation": root / "interpolation.png",
    }
    plot_relearning_curves(rows, records, config, paths["figure"])
    plot_resurgence_vs_trace(rows, paths["scatter"])
    plot_loss_surfaces(rows, records, paths["surfaces"])
    plot_interpolation(rows, records, paths["interpolation"])
    return paths
