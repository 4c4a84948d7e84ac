"""The full-profile leaderboard: Markdown and CSV tables, attack table, correlations and figures."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from halluc_bench.audit_rules import collapse_rule, format_rate, selection_rule
from halluc_bench.config import RunConfig
from halluc_bench.report.correlation import sharpness_correlations
from halluc_bench.report.full_figures import write_full_figures
from halluc_bench.report.full_rows import BASE, ModelRecords, attack_cells, full_rows, number
from halluc_bench.report.full_summary import seed_summary, summary_markdown
from halluc_bench.report.leaderboard import COLUMNS, markdown_table
from halluc_bench.results.store import RunDirectory, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

SELECTION_COLUMNS = {
    "seed": "seed", "model": "model", "rank": "rank", "collapsed": "collapsed", "learning_rate": "learning rate",
    "hyperparameters": "hyperparameters",
}
ATTACK_COLUMNS = {
    "relearn_auc": "relearn AUC", "relearn_half": "relearn half-return steps",
    "relearn_probability_resurgence": "relearn resurgence of p(hallucinated)",
    "benign_relearn_resurgence": "benign resurgence", "benign_relearn_auc": "benign AUC",
    "benign_relearn_half": "benign half-return steps",
    "noise_resurgence": "noise resurgence", "noise_auc": "noise AUC", "noise_half": "noise half-return sigma",
    "noise_delta_chair_i": "noise ΔCHAIR_i", "noise_delta_chair_i_sd": "noise ΔCHAIR_i SD", "noise_delta_p": "noise Δp",
    "worst_case_resurgence": "worst-case resurgence", "worst_case_auc": "worst-case AUC",
    "worst_case_half": "worst-case half-return rho", "worst_case_delta_chair_i": "worst-case ΔCHAIR_i",
    "worst_case_delta_p": "worst-case Δp",
}
PROBE_COLUMNS = {
    "hallucination_probability": "p(hallucinated)", "retain_nll": "retain NLL", "retain_trace": "retain trace",
    "hutchpp_trace": "Hutch++ trace", "top_eigenvalue": "top eigenvalue", "epsilon_sharpness": "ε-sharpness",
}


def full_columns(config: RunConfig) -> dict[str, str]:
    """Return row field -> column header of the full leaderboard, in table order."""
    standard = {key: header for key, header in COLUMNS.items() if key != "model"}
    quantization = {}
    for setting in config.full.quantization:
        quantization[f"delta_chair_i_{setting}"] = f"ΔCHAIR_i {setting}"
        quantization[f"delta_p_{setting}"] = f"Δp {setting}"
    return {**SELECTION_COLUMNS, **standard, **ATTACK_COLUMNS, **quantization, **PROBE_COLUMNS}


def attack_table(records: dict[str, dict], config: RunConfig) -> list[dict]:
    """Return one row per attacked model: attack, setting, budget and the four scores before and after."""
    table = []
    for seed in config.seeds:
        for method in config.methods:
            model = ModelRecords(records, seed, method)
            if model.get("eval") is None:
                continue
            before = _attack_scores(model.get("eval"), model.value("probe/hallucination", "hallucination_probability"))
            for cell in attack_cells(config):
                record = model.get(cell.key)
                if record is None:
                    continue
                after = _attack_scores(record, number(record.get("hallucination_probability")))
                row = {"seed": seed, "model": method, "attack": cell.attack, "setting": cell.setting, "budget": cell.budget}
                for name in after:
                    row[f"{name} before"], row[f"{name} after"] = before[name], after[name]
                table.append(row)
    return table


def _attack_scores(record: dict, probability: float) -> dict[str, float]:
    pope = record["pope"].get("adversarial", {})
    return {"CHAIR_i": record["chair"]["chair_i"], "CHAIR_s": record["chair"]["chair_s"],
            "POPE adv F1": number(pope.get("f1")), "p(hallucinated)": probability}


def correlation_population(rows: list[dict], config: RunConfig) -> tuple[list[dict], str]:
    """Return the rows that enter the correlations (non-collapsed methods of every repeat) and their description."""
    chosen = [row for row in rows if row["model"] != BASE and row["collapsed"] is False]
    left_out = sum(1 for row in rows if row["model"] != BASE and row["collapsed"] is not False)
    description = (f"{len(config.methods)} methods x {len(config.seeds)} seed(s), {left_out} collapsed or "
                   "unscored run(s) left out, and models whose value is undefined")
    return chosen, description


def write_full_leaderboard(run: RunDirectory, config: RunConfig) -> dict[str, Path]:
    """Write the full profile's tables, ``correlations.json``, ``metrics.json`` and figures into the run."""
    records = run.records()
    rows = full_rows(records, config)
    columns = full_columns(config)
    frame = pd.DataFrame(rows, columns=list(columns))
    frame["rank"] = [row["rank"] if row["rank"] is not None else "" for row in rows]  # unranked rows stay empty
    frame = frame.rename(columns=columns)
    population, description = correlation_population(rows, config)
    correlations = sharpness_correlations(population, description)
    paths = {name: run.root / file for name, file in (
        ("markdown", "leaderboard.md"), ("csv", "leaderboard.csv"), ("attacks", "attacks.csv"),
        ("correlations", "correlations.json"), ("metrics", "metrics.json"), ("summary", "summary.csv"))}
    summary = seed_summary(rows)
    write_text_atomic(paths["summary"], pd.DataFrame(summary).to_csv(index=False, float_format="%.6g"))
    write_text_atomic(paths["csv"], frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(paths["attacks"], pd.DataFrame(attack_table(records, config)).to_csv(index=False, float_format="%.6g"))
    write_json_atomic(paths["correlations"], {"population": description, "entries": correlations})
    write_text_atomic(paths["markdown"], full_markdown(frame, columns, config, records, correlations, summary))
    write_json_atomic(paths["metrics"], {"config": config.to_dict(), "rows": rows, "summary": summary,
                                         "correlations": correlations, "records": records})
    paths.update(write_full_figures(run.root, rows, records, config))
    return paths


def _table(frame: pd.DataFrame, headers: list[str]) -> str:
    return markdown_table(frame[headers], ".4g")


def full_markdown(
    frame: pd.DataFrame, columns: dict[str, str], config: RunConfig, records: dict, correlations: list[dict],
    summary: list[dict],
) -> str:
    """Return the Markdown leaderboard: summary over seeds, ranking, attacks, probes, grids and the correlations."""
    keys = ["seed", "model"]
    headers = [columns[key] for key in columns]
    first = headers.index(columns["relearn_auc"])
    probes = headers.index(columns["hallucination_probability"])
    versions = records[f"{BASE}/eval"].get("task_versions", {})
    lines = ["# Leaderboard (full profile)", ""]
    if len(config.seeds) > 1:
        lines += [
            "## Summary over seeds", "", summary_markdown(summary), "",
            f"Mean ± sample SD over the {len(config.seeds)} repeats (seeds {', '.join(str(s) for s in config.seeds)}) "
            "of mining, unlearning, attacks and probes on the same base model. Undefined values are left out, so a "
            "mean can cover fewer seeds (the *_n columns of summary.csv count them). "
            "Methods in order of mean rank. Per-repeat rows follow.", "",
        ]
    lines += [
        "## Ranking and utility", "",
        _table(frame, headers[:first]), "",
        f"CHAIR on {config.eval_split} captions; POPE F1 on the {config.eval_split} split. \"CHAIR_i relearned\": after "
        f"{config.relearn_steps[-1]} relearning steps on {config.relearn_samples} hallucinated captions (learning rate "
        f"{config.relearn_learning_rate:g}). Resurgence = (attacked - unlearned) / (base - unlearned): 1 means all of "
        "the erased hallucination returned, above 1 that the attack pushed it past the base model's, below 0 that "
        "the attack lowered it further. The base model is not unlearned or attacked, so those cells are empty; a "
        "method's resurgence cells are also empty where unlearning did not lower CHAIR_i, since no share is defined.",
        f"Learning rate: {selection_rule(config.full)}; grid = {config.unlearn_learning_rate:g} x {', '.join(f'{f:g}' for f in config.full.lr_factors)}, "
        f"scored on {config.full.selection_split} captions.",
        f"Collapse: {collapse_rule(config.full)}.",
        "Rank: per seed, the non-collapsed methods ordered by CHAIR_i relearned (lowest first), ties broken by "
        "CHAIR_i; equal rows share a rank. Collapsed models and the base model get no rank.",
        "", "## Attacks", "", _table(frame, [columns[k] for k in keys] + headers[first:probes]), "",
        _attack_notes(config), "", _specificity_note(summary), "", "## Probes", "", _table(frame, [columns[k] for k in keys] + headers[probes:]), "",
        "Every probe is taken on the forget loss (mean NLL of hallucinated-mention tokens) of a fixed probe batch, "
        "except retain NLL and retain trace (faithful caption tokens). p(hallucinated): mean probability of the "
        "hallucinated-mention tokens of a fixed probe set that no relearning attacker trains on.",
        "", "## Learning-rate grids", "", _grid_markdown(records, config), "",
        "## Sharpness and resurgence", "", _correlation_markdown(correlations), "",
        f"Task versions: {', '.join(f'{name} v{version}' for name, version in sorted(versions.items()))}. "
        f"Seeds: {', '.join(str(seed) for seed in config.seeds)}.", "",
    ]
    return "\n".join(lines)


def _attack_notes(config: RunConfig) -> str:
    settings = config.full
    return (
        "AUC: area under the resurgence ratio over the budget scaled to [0, 1]. Half-return: the smallest budget at "
        "which resurgence reaches 0.5 (linear interpolation; inf when it stays below within the grid). "
        f"Benign relearning: {config.relearn_samples} faithful reference captions, same steps and rate. "
        f"Noise: sigma relative to each tensor's RMS, sigmas {', '.join(f'{s:g}' for s in settings.noise_sigmas)}, "
        f"{settings.noise_draws} draw{'s' if settings.noise_draws != 1 else ''}; resurgence on the mean over draws, "
        "deltas (after - before) at the largest sigma, SD over draws (empty for one draw). "
        f"Worst case: {settings.worst_case_steps} PGD steps on the attacker's captions in a global L2 ball of radius "
        f"rho x the weight norm, rho {', '.join(f'{r:g}' for r in settings.worst_case_radii)}; deltas at the largest rho. "
        f"Quantization: round-to-nearest, asymmetric, group size {settings.quantization_group_size} for per_group. "
        "Δp: change of p(hallucinated). Every attacked model's scores before and after are in attacks.csv; "
        "the resurgence over the attacker's sample count k is in the rows of metrics.json."
    )


def _specificity_note(summary: list[dict]) -> str:
    """State for which methods benign relearning brought back as much CHAIR_i as the hallucination attack.

    When fine-tuning on faithful captions raises CHAIR_i as much, the attack's resurgence
    measures damage from fine-tuning at that learning rate, not a hidden hallucination.
    """
    compared = [entry for entry in summary if entry["model"] != BASE
                and math.isfinite(entry["benign_relearn_resurgence_mean"]) and math.isfinite(entry["resurgence_mean"])]
    if not compared:
        return "Benign and hallucination relearning could not be compared: resurgence is undefined for every method."
    unspecific = [entry["model"] for entry in compared
                  if entry["benign_relearn_resurgence_mean"] >= entry["resurgence_mean"]]
    if not unspecific:
        return ("For every method with a defined resurgence, relearning on hallucinated captions brought back more "
                "CHAIR_i than benign relearning (mean over seeds).")
    return (f"Benign relearning brought back at least as much CHAIR_i as the hallucination attack (mean over seeds) "
            f"for {', '.join(unspecific)}: for these, fine-tuning itself raises CHAIR_i at this learning rate, so "
            "their relearning resurgence is not specific to hallucinated data.")


def _grid_markdown(records: dict, config: RunConfig) -> str:
    rows = []
    for seed in config.seeds:
        for method in config.methods:
            selection = ModelRecords(records, seed, method).get("select")
            if selection is None:
                continue
            for point in selection["grid"]:
                rows.append({"seed": seed, "model": method, "learning rate": format_rate(point["learning_rate"]),
                             "chosen": point["learning_rate"] == selection["learning_rate"],
                             "CHAIR_i": point["chair_i"], "CHAIR_s": point["chair_s"], "recall": point["recall"],
                             "retain NLL": point["retain_nll"], "collapse": point["collapse"] or ""})
    if not rows:
        return "No learning-rate grid is stored yet."
    base = records.get(f"{BASE}/validation", {}).get("chair", {})
    reference = ""
    if base:
        floor = config.full.min_recall_share * base["recall"]
        reference = (f"Base model on {config.full.selection_split} captions: CHAIR_i {base['chair_i']:.4g}, recall "
                     f"{base['recall']:.4g}, so a rate qualifies with recall at least {floor:.4g}. ")
    return "\n".join([pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"), "",
                      f"{reference}collapse: why a grid point counts as collapsed; empty when it does not."])


def _correlation_markdown(correlations: list[dict]) -> str:
    table = pd.DataFrame([
        {"sharpness measure": entry["measure_name"], "resurgence": entry["target_name"], "n": entry["n"],
         "Spearman rho": entry["rho"], "p-value": entry["p_value"],
         "rho per seed": ", ".join("-" if rho is None else f"{rho:+.2f}" for rho in entry["rho_by_seed"].values())}
        for entry in correlations
    ])
    statements = [f"- {entry['statement']}" for entry in correlations if entry["rho"] is not None]
    skipped: dict[str, list[str]] = {}
    for entry in correlations:
        if entry["rho"] is None:
            skipped.setdefault(entry["note"], []).append(f"{entry['measure_name']} with {entry['target_name']}")
    for note, pairs in skipped.items():
        statements.append(f"- Not computed ({note}): {'; '.join(pairs)}.")
    return "\n".join([table.to_markdown(index=False, floatfmt=".4g"), "",
                      "rho from scipy.stats.spearmanr; the two-sided p-value is exact over all pairings "
                      "(scipy.stats.permutation_test) for up to 8 models, else scipy's t-approximation. Each model is "
                      "one point: a method's chosen model in one repeat. The top eigenvalue is the one of largest "
                      "magnitude, with its sign. rho per seed: the same correlation over the models of one seed "
                      "(in seed order; - where undefined). The models of one seed share its mined probe batch, so "
                      "the pooled rho also reflects differences between seeds.", "", *statements])
