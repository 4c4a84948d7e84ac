"""Leaderboard rows of the full profile, built from a run directory's records alone.

One row per repeat seed and model (the base model first). Resurgence ratios use CHAIR_i, except
columns named with "p", which use the hallucinated-token probability on the repeat's fixed probe set.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Iterator

from halluc_bench.attacks.summary import summarize_resurgence
from halluc_bench.audit_rules import format_rate, model_collapse
from halluc_bench.config import RunConfig
from halluc_bench.report.leaderboard import BASE, resurgence, standard_row

logger = logging.getLogger(__name__)

# Unlearner settings that every method shares through the audit budget; the hyperparameter column leaves them out.
BUDGET_FIELDS = {"steps", "batch_size", "retain_batch_size", "learning_rate", "seed", "optimizer", "weight_decay",
                 "lora", "train_vision_tower", "max_grad_norm", "mixed_precision", "loss_dtype"}


@dataclass(frozen=True)
class AttackCell:
    """One attacked model of one method: its record key, attack, setting and budget on the attack's axis."""

    key: str  # record key after ``seed=<s>/<method>/``
    attack: str
    setting: str
    budget: float


def attack_cells(config: RunConfig) -> Iterator[AttackCell]:
    """Yield every attack cell the full profile stores per method, in the order the attacks run."""
    settings = config.full
    for samples in sorted({config.relearn_samples, *settings.relearn_sample_grid}):
        for steps in config.relearn_steps:
            yield AttackCell(f"relearn/k={samples}/steps={steps}", "relearn", f"k={samples} steps={steps}", steps)
    for steps in config.relearn_steps:
        yield AttackCell(f"benign_relearn/steps={steps}", "benign_relearn", f"steps={steps}", steps)
    for sigma in settings.noise_sigmas:
        for draw in range(settings.noise_draws):
            yield AttackCell(f"noise/sigma={sigma:g}/draw={draw}", "noise", f"sigma={sigma:g} draw={draw}", sigma)
    for radius in settings.worst_case_radii:
        yield AttackCell(f"worst_case/rho={radius:g}", "worst_case", f"rho={radius:g}", radius)
    for setting in settings.quantization:
        yield AttackCell(f"quantize/{setting}", "quantize", setting, math.nan)


def number(value) -> float:
    """Return ``value`` as a float; None (a non-finite number stored as JSON null) becomes NaN."""
    return math.nan if value is None else float(value)


class ModelRecords:
    """The records of one model in one repeat, looked up by the part of the key after the model name."""

    def __init__(self, records: dict[str, dict], seed: int, model: str):
        self.records, self.seed, self.model = records, seed, model
        self.prefix = f"seed={seed}/{model}/"

    def get(self, name: str) -> dict | None:
        return self.records.get(self.prefix + name)

    def value(self, name: str, *path) -> float:
        """Return the number at ``path`` inside record ``name``, or NaN when the record is missing."""
        record = self.get(name)
        if record is None:
            return math.nan
        for part in path:
            record = record[part]
        return number(record)


def curve_summary(points: list[tuple[float, float]], base: float, unlearned: float) -> dict[str, float]:
    """Summarise one attack curve of (budget, score) points: resurgence at the largest budget, area, half-return budget.

    All three are NaN when unlearning erased nothing (base - unlearned <= 1e-12), as in the
    standard leaderboard. The half-return budget is infinite when the ratio stays below 0.5.
    """
    points = [(budget, score) for budget, score in points if math.isfinite(score)]
    if not points or not base - unlearned > 1e-12:
        return {"resurgence": math.nan, "area": math.nan, "half": math.nan}
    summary = summarize_resurgence([b for b, _ in points], [s for _, s in points], base, unlearned)
    half = summary.half_return_budget
    return {
        "resurgence": resurgence(base, unlearned, points[-1][1]),
        "area": number(summary.area),
        "half": math.inf if half is None and summary.area is not None else number(half),
    }


def _scores(record: dict | None) -> tuple[float, float]:
    if record is None:
        return math.nan, math.nan
    return record["chair"]["chair_i"], number(record.get("hallucination_probability"))


def _curves(model: ModelRecords, config: RunConfig) -> dict[str, list[tuple[float, float, float]]]:
    """Return attack -> [(budget, CHAIR_i, p)] for the curve attacks; noise points average the draws."""
    curves: dict[str, list] = {"relearn": [], "benign_relearn": [], "noise": [], "worst_case": []}
    noise: dict[float, list[tuple[float, float]]] = {}
    main = f"relearn/k={config.relearn_samples}/"
    for cell in attack_cells(config):
        record = model.get(cell.key)
        if record is None or cell.attack == "quantize" or (cell.attack == "relearn" and not cell.key.startswith(main)):
            continue
        if cell.attack == "noise":
            noise.setdefault(cell.budget, []).append(_scores(record))
        else:
            curves[cell.attack].append((cell.budget, *_scores(record)))
    for sigma, draws in noise.items():
        curves["noise"].append((sigma, statistics.fmean(d[0] for d in draws), statistics.fmean(d[1] for d in draws)))
    return {attack: sorted(points) for attack, points in curves.items()}


def _deltas(model: ModelRecords, keys: list[str], before: tuple[float, float]) -> tuple[float, float, float]:
    """Return (mean ΔCHAIR_i, its sample SD, mean Δp) over the stored records of ``keys``."""
    found = [_scores(model.get(key)) for key in keys if model.get(key) is not None]
    if not found:
        return math.nan, math.nan, math.nan
    chair = [after[0] - before[0] for after in found]
    spread = statistics.stdev(chair) if len(chair) > 1 else math.nan  # undefined for one draw
    return statistics.fmean(chair), spread, statistics.fmean(after[1] - before[1] for after in found)


def attack_columns(model: ModelRecords, config: RunConfig, base: tuple[float, float], before: tuple[float, float]) -> dict:
    """Return the attack columns of one method: curve summaries and noise, worst-case and quantization deltas."""
    row: dict[str, float] = {}
    for attack, curve in _curves(model, config).items():
        chair = curve_summary([(b, c) for b, c, _ in curve], base[0], before[0])
        probability = curve_summary([(b, p) for b, _, p in curve], base[1], before[1])
        row.update({f"{attack}_resurgence": chair["resurgence"], f"{attack}_auc": chair["area"],
                    f"{attack}_half": chair["half"], f"{attack}_probability_resurgence": probability["resurgence"]})
    settings = config.full
    largest = max(settings.noise_sigmas)
    keys = [f"noise/sigma={largest:g}/draw={draw}" for draw in range(settings.noise_draws)]
    row["noise_delta_chair_i"], row["noise_delta_chair_i_sd"], row["noise_delta_p"] = _deltas(model, keys, before)
    worst = [f"worst_case/rho={max(settings.worst_case_radii):g}"]
    row["worst_case_delta_chair_i"], _, row["worst_case_delta_p"] = _deltas(model, worst, before)
    for setting in settings.quantization:
        delta_chair, _, delta_p = _deltas(model, [f"quantize/{setting}"], before)
        row[f"delta_chair_i_{setting}"], row[f"delta_p_{setting}"] = delta_chair, delta_p
    return row


def probe_columns(model: ModelRecords) -> dict[str, float]:
    """Return the probe columns of one model (NaN where a probe record is missing)."""
    eigen = model.get("probe/eigen")
    return {
        "hallucination_probability": model.value("probe/hallucination", "hallucination_probability"),
        "retain_trace": model.value("probe/retain_trace", "hessian_trace", "trace"),
        "hutchpp_trace": model.value("probe/hutchpp", "hessian_trace", "trace"),
        "top_eigenvalue": number(eigen["eigen"]["eigenvalues"][0]) if eigen else math.nan,
        "epsilon_sharpness": model.value("probe/sharpness", "sharpness", "sharpness"),
    }


def compact_hyperparameters(unlearner_config: dict) -> str:
    """Return the method's own settings (the shared budget left out) as ``name=value`` pairs."""
    parts = []
    for name, value in sorted(unlearner_config.items()):
        if name in BUDGET_FIELDS:
            continue
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def selection_columns(model: ModelRecords, records: dict[str, dict], config: RunConfig) -> dict:
    """Return learning rate, hyperparameters, collapse flag and reason, and retain NLL of a chosen model."""
    selection = model.get("select")
    if selection is None:
        return {"learning_rate": math.nan, "hyperparameters": "", "selection_fallback": None, "collapsed": None,
                "collapse_reason": "", "retain_nll": math.nan}
    grid = f"grid/lr={format_rate(selection['learning_rate'])}"
    unlearn = model.get(f"{grid}/unlearn") or {}
    reasons = model_collapse(selection, model.get("eval"), records[f"{BASE}/eval"], config.full)
    return {
        "learning_rate": selection["learning_rate"],
        "hyperparameters": compact_hyperparameters(unlearn.get("config", {})),
        "selection_fallback": selection["fallback"] is not None,
        "collapsed": bool(reasons),
        "collapse_reason": "; ".join(reasons),
        "retain_nll": model.value(f"{grid}/validation", "retain_nll"),
    }


def base_row(records: dict[str, dict], config: RunConfig, seed: int) -> dict:
    """Return the base model's row of one repeat: standard columns and probes, no attack or selection."""
    model = ModelRecords(records, seed, BASE)
    row = {"seed": seed, "rank": None, **standard_row(BASE, records[f"{BASE}/eval"], model.get("probe/trace"))}
    row.update({"learning_rate": math.nan, "hyperparameters": "", "selection_fallback": None, "collapsed": None,
                "collapse_reason": "", "retain_nll": model.value("retain_nll", "retain_nll")})
    row.update(probe_columns(model))
    return row


def method_row(records: dict[str, dict], config: RunConfig, seed: int, method: str) -> dict:
    """Return one chosen model's row: standard columns, selection, attacks and probes."""
    model = ModelRecords(records, seed, method)
    base_model = ModelRecords(records, seed, BASE)
    base = (records[f"{BASE}/eval"]["chair"]["chair_i"], base_model.value("probe/hallucination", "hallucination_probability"))
    before = (model.get("eval")["chair"]["chair_i"], model.value("probe/hallucination", "hallucination_probability"))
    row = {"seed": seed, "rank": None, **standard_row(method, model.get("eval"), model.get("probe/trace"))}
    row.update(selection_columns(model, records, config))
    row.update(attack_columns(model, config, base, before))
    row["relearn_chair_i"] = _last_relearn_chair_i(model, config)
    row["resurgence"] = row.pop("relearn_resurgence")
    row["relearn_resurgence_by_samples"] = _resurgence_by_samples(model, config, base[0], before[0])
    row.update(probe_columns(model))
    return row


def _resurgence_by_samples(model: ModelRecords, config: RunConfig, base: float, unlearned: float) -> dict[int, float]:
    """Return attacker sample count k -> CHAIR_i resurgence after the longest relearning run on k captions."""
    curve = {}
    for samples in sorted({config.relearn_samples, *config.full.relearn_sample_grid}):
        record = model.get(f"relearn/k={samples}/steps={config.relearn_steps[-1]}")
        curve[samples] = resurgence(base, unlearned, record["chair"]["chair_i"]) if record else math.nan
    return curve


def _last_relearn_chair_i(model: ModelRecords, config: RunConfig) -> float:
    record = model.get(f"relearn/k={config.relearn_samples}/steps={config.relearn_steps[-1]}")
    return record["chair"]["chair_i"] if record else math.nan


def rank_rows(rows: list[dict]) -> None:
    """Set ``rank`` per repeat: non-collapsed methods by CHAIR_i after the longest relearning run, lowest first.

    Ties on that value are broken by CHAIR_i of the unlearned model, and rows still equal
    share a rank. The base model, collapsed models and rows without the value get no rank.
    """
    for seed in {row["seed"] for row in rows}:
        ranked = [row for row in rows if row["seed"] == seed and row["model"] != BASE and row["collapsed"] is False
                  and math.isfinite(row["relearn_chair_i"])]
        ranked.sort(key=lambda row: (row["relearn_chair_i"], row["chair_i"]))
        for position, row in enumerate(ranked, start=1):
            previous = ranked[position - 2] if position > 1 else None
            same = previous is not None and (previous["relearn_chair_i"], previous["chair_i"]) == (
                row["relearn_chair_i"], row["chair_i"])
            row["rank"] = previous["rank"] if same else position


def full_rows(records: dict[str, dict], config: RunConfig) -> list[dict]:
    """Return every row of the full leaderboard: per repeat, the base model then each method in run order."""
    rows = []
    for seed in config.seeds:
        rows.append(base_row(records, config, seed))
        for method in config.methods:
            if f"seed={seed}/{method}/eval" not in records:
                logger.warning("no evaluation of %s for seed %d in the run directory; left out of the leaderboard",
                               method, seed)
                continue
            rows.append(method_row(records, config, seed, method))
    for row in rows:
        row["label"] = row["model"] if len(config.seeds) == 1 else f"{row['model']} (seed {row['seed']})"
    rank_rows(rows)
    return rows
