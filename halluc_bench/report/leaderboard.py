"""Leaderboard tables and figures built from a run directory's records."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from halluc_bench.config import RunConfig  # noqa: E402
from halluc_bench.results.store import RunDirectory, write_json_atomic, write_text_atomic  # noqa: E402

logger = logging.getLogger(__name__)

BASE = "base"
COLUMNS = {
    "model": "model",
    "chair_s": "CHAIR_s",
    "chair_i": "CHAIR_i",
    "recall": "recall",
    "pope_random_f1": "POPE rand F1",
    "pope_adversarial_f1": "POPE adv F1",
    "mme_existence": "MME existence",
    "mme_count": "MME count",
    "mme_position": "MME position",
    "mme_color": "MME color",
    "relearn_chair_i": "CHAIR_i relearned",
    "resurgence": "resurgence",
    "hessian_trace": "Hessian trace",
    "hessian_trace_se": "trace SE",
}


def markdown_table(frame: pd.DataFrame, floatfmt: str) -> str:
    """Render ``frame`` as a Markdown table in which missing and NaN cells are empty, not "nan"."""
    cleaned = frame.astype(object).where(frame.notna(), None)
    return cleaned.to_markdown(index=False, floatfmt=floatfmt, missingval="")


def resurgence(base: float, unlearned: float, attacked: float) -> float:
    """Return (attacked - unlearned) / (base - unlearned): the share of the erased hallucination that returned.

    NaN when unlearning removed nothing (base - unlearned <= 1e-12), since no share is defined then.
    """
    erased = base - unlearned
    if erased <= 1e-12:
        return math.nan
    return (attacked - unlearned) / erased


def relearn_curve(records: dict[str, dict], method: str) -> list[tuple[int, float]]:
    """Return (steps, CHAIR_i) points of the relearning attack, starting at 0 steps (the unlearned model)."""
    points = [(0, records[f"{method}/eval"]["chair"]["chair_i"])]
    prefix = f"{method}/relearn/steps="
    for key, record in records.items():
        if key.startswith(prefix):
            points.append((int(key[len(prefix):]), record["chair"]["chair_i"]))
    return sorted(points)


def leaderboard_rows(records: dict[str, dict], config: RunConfig) -> list[dict]:
    """One row per model: the base model first, then every method in run order."""
    base_eval = records[f"{BASE}/eval"]
    rows = [standard_row(BASE, base_eval, records.get(f"{BASE}/probe/trace"))]
    for method in config.methods:
        if f"{method}/eval" not in records:
            logger.warning("no evaluation of %s in the run directory; left out of the leaderboard", method)
            continue
        row = standard_row(method, records[f"{method}/eval"], records.get(f"{method}/probe/trace"))
        curve = relearn_curve(records, method)
        if len(curve) > 1:
            attacked = curve[-1][1]
            row["relearn_chair_i"] = attacked
            row["resurgence"] = resurgence(base_eval["chair"]["chair_i"], row["chair_i"], attacked)
        rows.append(row)
    return rows


def standard_row(model: str, evaluation: dict, trace: dict | None) -> dict:
    """Return the standard columns of one model from its evaluation and trace records; missing values are NaN."""
    chair, pope = evaluation["chair"], evaluation["pope"]
    row = {
        "model": model,
        "chair_s": chair["chair_s"],
        "chair_i": chair["chair_i"],
        "recall": chair["recall"],
        "pope_random_f1": pope.get("random", {}).get("f1", math.nan),
        "pope_adversarial_f1": pope.get("adversarial", {}).get("f1", math.nan),
        "relearn_chair_i": math.nan,
        "resurgence": math.nan,
        "hessian_trace": math.nan,
        "hessian_trace_se": math.nan,
    }
    mme = evaluation.get("mme") or {}
    for subtask in ("existence", "count", "position", "color"):
        value = mme.get(subtask)
        row[f"mme_{subtask}"] = math.nan if value is None else value
    if trace is not None:
        row["hessian_trace"] = trace["hessian_trace"]["trace"]
        row["hessian_trace_se"] = trace["hessian_trace"]["stderr"]
    return row


def write_leaderboard(run: RunDirectory, config: RunConfig) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv``, ``metrics.json`` and ``relearning.png`` into the run."""
    records = run.records()
    rows = leaderboard_rows(records, config)
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).rename(columns=COLUMNS)
    paths = {
        "markdown": run.root / "leaderboard.md",
        "csv": run.root / "leaderboard.csv",
        "metrics": run.root / "metrics.json",
        "figure": run.root / "relearning.png",
    }
    write_text_atomic(paths["csv"], frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(paths["markdown"], _markdown(frame, config, records))
    write_json_atomic(paths["metrics"], {"config": config.to_dict(), "rows": rows, "records": records})
    plot_relearning(records, config, paths["figure"])
    return paths


def _markdown(frame: pd.DataFrame, config: RunConfig, records: dict[str, dict]) -> str:
    versions = records[f"{BASE}/eval"].get("task_versions", {})
    version_text = ", ".join(f"{name} v{version}" for name, version in sorted(versions.items()))
    steps = config.relearn_steps[-1]
    lines = [
        "# Leaderboard",
        "",
        markdown_table(frame, ".4f"),
        "",
        f"CHAIR on {config.eval_split} captions; POPE F1 on the {config.eval_split} split. "
        f"\"CHAIR_i relearned\": after {steps} relearning steps on {config.relearn_samples} hallucinated captions "
        f"(learning rate {config.relearn_learning_rate:g}). Resurgence = (relearned - unlearned) / (base - unlearned) "
        "on CHAIR_i: 1 means all of the erased hallucination returned, above 1 that relearning pushed CHAIR_i past "
        "the base model's. The base model is not unlearned or attacked, so those cells are empty. MME: subtask "
        "score = 100 x (accuracy + accuracy+), 0 to 200, where a model answering \"yes\" to everything scores 50. "
        "Hessian trace: Hutchinson estimate on the forget loss, with its standard error.",
        f"Task versions: {version_text}. Seed {config.seed}.",
        "",
    ]
    return "\n".join(lines)


def plot_relearning(records: dict[str, dict], config: RunConfig, path: Path) -> None:
    """Plot CHAIR_i against relearning steps for each method, with the base model as a reference line."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for method in config.methods:
        if f"{method}/eval" not in records:
            continue
        steps, values = zip(*relearn_curve(records, method))
        axes.plot(steps, values, marker="o", label=method)
    axes.axhline(records[f"{BASE}/eval"]["chair"]["chair_i"], color="grey", linestyle="--", label="base model")
    axes.set_xlabel("relearning steps")
    axes.set_ylabel("CHAIR_i")
    axes.set_title(f"Hallucination after relearning on {config.relearn_samples} captions")
    axes.legend()
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)
