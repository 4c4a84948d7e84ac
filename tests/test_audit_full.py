"""The full audit profile on the tiny toy world and tiny LLaVA of test_audit, plus its record-level rules."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from halluc_bench.audit import run_audit
from halluc_bench.audit_rules import choose_learning_rate, format_rate, model_collapse, selection_record, training_reasons
from halluc_bench.cli import build_parser, main
from halluc_bench.config import FullProfileSettings, RunConfig
from halluc_bench.report.correlation import sharpness_correlations, spearman
from halluc_bench.report.full import correlation_population, full_columns
from halluc_bench.report.full_rows import attack_cells, full_rows
from halluc_bench.unlearning.selection import GridTrial
from test_audit import cli_arguments, tiny_config, tiny_setup  # noqa: F401  (tiny_setup is a fixture)

METHODS = ("ga", "npo", "sare")
TINY_FULL = FullProfileSettings(
    lr_factors=(1.0, 3.0), selection_caption_images=6, noise_sigmas=(0.01, 0.05), noise_draws=2,
    worst_case_radii=(0.01,), worst_case_steps=2, quantization=("int8-per_channel", "int4-per_group"),
    quantization_group_size=16, probe_examples=8, hutchpp_sketch=2, hutchpp_probes=2, lanczos_iterations=4,
    sharpness_steps=2, surface_points=5, interpolation_points=3,
)
FULL_OPTIONS = [
    "--profile", "full", "--lr-grid", "1,3", "--selection-caption-images", "6", "--noise-sigmas", "0.01,0.05",
    "--noise-draws", "2", "--worst-case-radii", "0.01", "--worst-case-steps", "2",
    "--quantization", "int8-per_channel,int4-per_group", "--quantization-group-size", "16", "--probe-examples", "8",
    "--hutchpp-sketch", "2", "--hutchpp-probes", "2", "--lanczos-iterations", "4", "--sharpness-steps", "2",
    "--surface-points", "5", "--interpolation-points", "3",
]


def full_config(setup, output_dir: Path, **changes) -> RunConfig:
    return tiny_config(setup, output_dir, profile="full", full=TINY_FULL, methods=METHODS, **changes)


@pytest.fixture(scope="module")
def full_run(tiny_setup, tmp_path_factory) -> Path:
    return run_audit(full_config(tiny_setup, tmp_path_factory.mktemp("full")))


def read_records(run: Path) -> dict[str, dict]:
    return json.loads((run / "metrics.json").read_text())["records"]


# ----------------------------------------------------------------------------- end to end
def test_full_writes_files(full_run):
    for name in ("leaderboard.md", "leaderboard.csv", "attacks.csv", "correlations.json", "metrics.json"):
        assert (full_run / name).is_file(), name
    for name in ("relearning.png", "resurgence_vs_trace.png", "loss_surfaces.png", "interpolation.png",
                 "resurgence_vs_samples.png"):
        assert (full_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    markdown = (full_run / "leaderboard.md").read_text()
    assert markdown.startswith("# Leaderboard (full profile)")
    assert "## Sharpness and resurgence" in markdown
    assert "so a rate qualifies with recall at least" in markdown
    assert "| nan" not in markdown


def test_full_records_every_cell(tiny_setup, full_run):
    records = read_records(full_run)
    config = full_config(tiny_setup, full_run)
    for key in ("base/eval", "base/validation", "seed=0/mining", "seed=0/base/retain_nll"):
        assert key in records, key
    probes = ("trace", "retain_trace", "hutchpp", "eigen", "sharpness", "surface", "hallucination")
    for model in ("base", *METHODS):
        for probe in probes:
            assert f"seed=0/{model}/probe/{probe}" in records, (model, probe)
    low, high = (format_rate(config.unlearn_learning_rate * factor) for factor in TINY_FULL.lr_factors)
    for method in METHODS:
        for name in ("select", "eval", "probe/interpolation", f"grid/lr={low}/unlearn", f"grid/lr={high}/validation"):
            assert f"seed=0/{method}/{name}" in records, (method, name)
        for cell in attack_cells(config):
            assert f"seed=0/{method}/{cell.key}" in records, (method, cell.key)


def test_full_leaderboard_columns(tiny_setup, full_run):
    frame = pd.read_csv(full_run / "leaderboard.csv")
    config = full_config(tiny_setup, full_run)
    assert list(frame.columns) == list(full_columns(config).values())
    assert list(frame["model"]) == ["base", *METHODS]
    assert pd.isna(frame.loc[0, "collapsed"])
    assert pd.isna(frame.loc[0, "rank"])


def test_full_values_finite(full_run):
    frame = pd.read_csv(full_run / "leaderboard.csv").set_index("model")
    always = ("CHAIR_i", "recall", "POPE adv F1", "Hessian trace", "Hutch++ trace", "top eigenvalue", "ε-sharpness",
              "retain trace", "retain NLL", "p(hallucinated)")
    attacked = ("learning rate", "CHAIR_i relearned", "noise ΔCHAIR_i", "noise ΔCHAIR_i SD", "noise Δp",
                "worst-case ΔCHAIR_i", "worst-case Δp", "ΔCHAIR_i int8-per_channel", "Δp int4-per_group")
    for model in ("base", *METHODS):
        for column in always:
            assert math.isfinite(frame.loc[model, column]), (model, column)
    for model in METHODS:
        for column in attacked:
            assert math.isfinite(frame.loc[model, column]), (model, column)
        erased = frame.loc["base", "CHAIR_i"] - frame.loc[model, "CHAIR_i"] > 1e-12
        assert math.isfinite(frame.loc[model, "resurgence"]) == erased, model


def test_full_attack_table_before_after(tiny_setup, full_run):
    table = pd.read_csv(full_run / "attacks.csv")
    assert set(table["attack"]) == {"relearn", "benign_relearn", "noise", "worst_case", "quantize"}
    for name in ("CHAIR_i", "CHAIR_s", "POPE adv F1", "p(hallucinated)"):
        assert table[f"{name} before"].notna().all(), name
        assert table[f"{name} after"].notna().all(), name
    assert len(table) == len(METHODS) * len(list(attack_cells(full_config(tiny_setup, full_run))))


def test_full_grid_and_checkpoints(full_run):
    records = read_records(full_run)
    for method in METHODS:
        selection = records[f"seed=0/{method}/select"]
        rates = [point["learning_rate"] for point in selection["grid"]]
        assert rates == pytest.approx([1e-5, 3e-5])  # the run rate 1e-5 times the factors 1 and 3
        assert selection["learning_rate"] in rates
        folders = sorted(path.name for path in (full_run / "seed=0" / "models" / method).iterdir())
        assert folders == [f"lr={selection['learning_rate']:.4g}"]


def test_full_correlations_stored(full_run):
    stored = json.loads((full_run / "correlations.json").read_text())
    entries = stored["entries"]
    assert {entry["measure"] for entry in entries} == {"hessian_trace", "hutchpp_trace", "top_eigenvalue",
                                                      "epsilon_sharpness"}
    for entry in entries:
        assert entry["statement"].startswith(f"Across {entry['n']} unlearned models")
        assert (entry["rho"] is None) == (entry["n"] < 3 or entry["note"].startswith("one of"))


def test_full_resume_reuses_records(tiny_setup, full_run, monkeypatch):
    from halluc_bench.audit_probes import MODEL_PROBES

    before = (full_run / "leaderboard.csv").read_text()

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    for target in ("halluc_bench.audit_full.unlearn_at_rate", "halluc_bench.audit_full.evaluate",
                   "halluc_bench.audit_full.evaluate_chair", "halluc_bench.audit_full.retain_nll",
                   "halluc_bench.audit_attacks.attack_scores", "halluc_bench.audit_attacks.probe_interpolation"):
        monkeypatch.setattr(target, forbidden)
    for name in MODEL_PROBES:
        monkeypatch.setitem(MODEL_PROBES, name, forbidden)
    run_audit(full_config(tiny_setup, full_run))
    assert (full_run / "leaderboard.csv").read_text() == before


def test_full_resume_fills_missing_cells(tiny_setup, full_run, tmp_path):
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(full_run, copy_dir)
    removed = ["seed=0/npo/noise/sigma=0.05/draw=1", "seed=0/sare/probe/hutchpp", "seed=0/ga/quantize/int4-per_group"]
    for key in removed:
        (copy_dir / "records" / f"{key}.json").unlink()
    run_audit(full_config(tiny_setup, copy_dir))
    for key in removed:
        assert (copy_dir / "records" / f"{key}.json").is_file(), key
    assert (copy_dir / "leaderboard.csv").read_text() == (full_run / "leaderboard.csv").read_text()


def test_cli_full_matches_api(tiny_setup, full_run, tmp_path, capsys):
    config = full_config(tiny_setup, tmp_path / "cli")
    assert main(cli_arguments(config) + FULL_OPTIONS) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text()) == json.loads((full_run / "config.json").read_text())
    assert "# Leaderboard (full profile)" in capsys.readouterr().out
    assert (tmp_path / "cli" / "leaderboard.csv").read_text() == (full_run / "leaderboard.csv").read_text()


def test_full_two_seeds_and_sample_grid(tiny_setup, tmp_path):
    settings = dataclasses.replace(TINY_FULL, seeds=(0, 1), lr_factors=(1.0,), noise_sigmas=(0.01,), noise_draws=1,
                                   quantization=("int8-per_channel",), relearn_sample_grid=(2,))
    config = tiny_config(tiny_setup, tmp_path / "seeds", profile="full", full=settings, methods=("ga", "sare"))
    run = run_audit(config)
    frame = pd.read_csv(run / "leaderboard.csv")
    assert list(zip(frame["seed"], frame["model"])) == [(0, "base"), (0, "ga"), (0, "sare"),
                                                         (1, "base"), (1, "ga"), (1, "sare")]
    records = read_records(run)
    assert records["seed=0/mining"]["forget_fingerprint"] != records["seed=1/mining"]["forget_fingerprint"]
    assert "seed=1/sare/quantize/int8-per_channel" in records
    assert records["seed=1/ga/relearn/k=2/steps=2"]["attack"]["samples"] == 2
    rows = json.loads((run / "metrics.json").read_text())["rows"]
    assert set(rows[1]["relearn_resurgence_by_samples"]) == {"2", "4"}
    stored = json.loads((run / "correlations.json").read_text())
    assert "2 methods x 2 seed(s)" in stored["population"]
    assert max(entry["n"] for entry in stored["entries"]) <= 4
    summary = pd.read_csv(run / "summary.csv")
    assert summary["model"].iloc[0] == "base"
    assert sorted(summary["model"]) == ["base", "ga", "sare"]
    ga = summary.set_index("model").loc["ga"]
    assert ga["repeats"] == 2
    assert ga["chair_i_mean"] == pytest.approx(frame[frame["model"] == "ga"]["CHAIR_i"].mean(), rel=1e-5)
    assert ga["chair_i_sd"] == pytest.approx(frame[frame["model"] == "ga"]["CHAIR_i"].std(ddof=1), rel=1e-4, abs=1e-9)
    assert "## Summary over seeds" in (run / "leaderboard.md").read_text()


# ----------------------------------------------------------------------------- options and configuration
def test_cli_full_option_needs_profile(tiny_setup, tmp_path, capsys):
    config = tiny_config(tiny_setup, tmp_path / "run")
    assert main(cli_arguments(config) + ["--lr-grid", "1,3"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert "--lr-grid" in message
    assert "--profile full" in message


def test_cli_methods_all(tmp_path):
    from halluc_bench.cli import _methods
    from halluc_bench.unlearning.base import UNLEARNERS

    parser = build_parser()
    full = parser.parse_args(["run", "--profile", "full"])
    assert _methods(full) == tuple(UNLEARNERS.names())
    named = parser.parse_args(["run", "--methods", "all"])
    assert _methods(named) == tuple(UNLEARNERS.names())
    standard = parser.parse_args(["run"])
    assert _methods(standard) == RunConfig().methods


def test_config_standard_stores_no_full_fields(tmp_path):
    fields = RunConfig(output_dir=tmp_path).result_fields()
    assert "profile" not in fields
    assert "full" not in fields
    full = RunConfig(output_dir=tmp_path, profile="full").result_fields()
    assert full["full"]["lr_factors"] == [0.3, 1.0, 3.0]


def test_config_rejects_full_settings_on_standard(tmp_path):
    with pytest.raises(ValueError, match="lr_factors"):
        RunConfig(output_dir=tmp_path, full=FullProfileSettings(lr_factors=(1.0,)))


def test_config_rejects_bad_quantization():
    with pytest.raises(ValueError, match="int4-per_group"):
        FullProfileSettings(quantization=("int4-per_block",))


# ----------------------------------------------------------------------------- selection and collapse rules
def chair_record(chair_i: float, recall: float, retain_nll: float = 0.7) -> dict:
    captions = [{"image_id": index, "caption": "a dog and a cup on the table"} for index in range(4)]
    return {"chair": {"chair_i": chair_i, "chair_s": chair_i, "recall": recall, "captions": captions},
            "retain_nll": retain_nll}


def unlearn_record(retain_losses: list[float], stopped: str | None = None) -> dict:
    log = [{"step": step, "epoch": 0, "batch": step, "forget_loss": 1.0, "retain_loss": loss, "total_loss": 1.0,
            "grad_norm": 1.0, "seconds": 0.0, "extras": {}} for step, loss in enumerate(retain_losses)]
    return {"log": log, "stopped": stopped, "config": {}}


def test_selection_picks_documented_rate():
    settings = FullProfileSettings()
    base = chair_record(0.5, 1.0)
    rates = [1e-5, 3e-5, 1e-4, 3e-4]
    grid = [
        (unlearn_record([0.7] * 6), chair_record(0.40, 0.99)),  # qualifies
        (unlearn_record([0.7] * 6), chair_record(0.30, 0.96)),  # qualifies, lowest CHAIR_i among qualifying
        (unlearn_record([0.7] * 6), chair_record(0.10, 0.90)),  # recall below 95% of the base model's
        (unlearn_record([0.7] * 6), chair_record(0.05, 0.99, retain_nll=2.5)),  # collapsed: retain NLL up 1.8 nats
    ]
    record = selection_record(rates, grid, base, settings)
    assert record["learning_rate"] == 3e-5
    assert record["fallback"] is None
    assert record["collapse"] is None
    assert "retain NLL" in record["grid"][3]["collapse"]


def test_selection_tie_takes_smaller_rate():
    trials = [GridTrial(3e-4, 0.2, 1.0), GridTrial(1e-4, 0.2, 1.0)]
    chosen, fallback = choose_learning_rate(trials, 1.0, FullProfileSettings())
    assert chosen.learning_rate == 1e-4
    assert fallback is None


def test_selection_fallback_when_none_qualifies():
    trials = [GridTrial(1e-4, 0.2, 0.80), GridTrial(3e-4, 0.1, 0.90), GridTrial(1e-3, 0.0, 0.99, collapse="broken")]
    chosen, fallback = choose_learning_rate(trials, 1.0, FullProfileSettings())
    assert chosen.learning_rate == 3e-4
    assert "no learning rate qualifies" in fallback


def test_training_reasons_rising_retain_loss():
    reasons = training_reasons(unlearn_record([0.7] * 5 + [2.0] * 5), FullProfileSettings())
    assert len(reasons) == 1
    assert "retain loss rose" in reasons[0]
    assert training_reasons(unlearn_record([0.7] * 10), FullProfileSettings()) == []


def test_collapse_on_hand_made_record():
    settings = FullProfileSettings()
    selection = {"collapse": None}
    healthy = model_collapse(selection, chair_record(0.2, 0.9), chair_record(0.5, 1.0), settings)
    assert healthy == []
    low_recall = model_collapse(selection, chair_record(0.0, 0.2), chair_record(0.5, 1.0), settings)
    assert len(low_recall) == 1
    assert "recall 0.2000 below 50%" in low_recall[0]
    degenerate = chair_record(0.2, 0.9)
    degenerate["chair"]["captions"] = [{"image_id": 0, "caption": "dog dog dog dog"}] * 4
    assert model_collapse(selection, degenerate, chair_record(0.5, 1.0), settings)


def healthy_records(run: Path) -> dict[str, dict]:
    """The run's records with every method's chosen model made healthy: no grid collapse, the base model's recall."""
    records = copy.deepcopy(read_records(run))
    for method in METHODS:
        records[f"seed=0/{method}/select"]["collapse"] = None
        records[f"seed=0/{method}/eval"]["chair"]["recall"] = records["base/eval"]["chair"]["recall"]
    return records


def test_collapse_flag_in_leaderboard(tiny_setup, full_run):
    records = healthy_records(full_run)
    config = full_config(tiny_setup, full_run)
    records["seed=0/npo/eval"]["chair"]["recall"] = -1.0  # below any share of the base model's recall
    rows = {row["model"]: row for row in full_rows(records, config)}
    assert rows["npo"]["collapsed"] is True
    assert rows["npo"]["rank"] is None
    assert rows["ga"]["collapsed"] is False
    assert rows["ga"]["rank"] is not None
    population, _ = correlation_population(list(rows.values()), config)
    assert [row["model"] for row in population] == ["ga", "sare"]


# ----------------------------------------------------------------------------- correlation
def hand_spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """rho = 1 - 6 sum d^2 / (n (n^2 - 1)) for distinct values; p = share of pairings with |rho| at least as large."""
    n = len(xs)

    def ranks(values):
        order = sorted(values)
        return [order.index(value) + 1 for value in values]

    def rho_of(first, second):
        return 1 - 6 * sum((a - b) ** 2 for a, b in zip(first, second)) / (n * (n * n - 1))

    rx, ry = ranks(xs), ranks(ys)
    observed = rho_of(rx, ry)
    values = [rho_of(list(permuted), ry) for permuted in itertools.permutations(rx)]
    greater = sum(value >= observed - 1e-12 for value in values) / len(values)
    less = sum(value <= observed + 1e-12 for value in values) / len(values)
    return observed, min(1.0, 2 * min(greater, less))


def test_spearman_matches_hand():
    xs = [3.1, 0.4, 2.2, 5.0, 1.7]
    ys = [0.9, 0.1, 0.2, 0.8, 0.5]
    rho, p_value, note = spearman(xs, ys)
    expected_rho, expected_p = hand_spearman(xs, ys)
    assert rho == pytest.approx(expected_rho)
    assert p_value == pytest.approx(expected_p)
    assert note == "exact permutation p-value"


def test_spearman_exact_at_largest_n():
    xs = [0.3, 1.9, 0.8, 2.5, 1.1, 3.3, 0.1, 2.0]  # 8 points: the largest exact case, 8! = 40320 orders
    ys = [0.2, 0.7, 0.4, 0.9, 0.1, 0.8, 0.3, 0.5]
    rho, p_value, note = spearman(xs, ys)
    expected_rho, expected_p = hand_spearman(xs, ys)
    assert rho == pytest.approx(expected_rho)
    assert p_value == pytest.approx(expected_p)
    assert note == "exact permutation p-value"


def test_spearman_too_few_points():
    rho, p_value, note = spearman([1.0, 2.0], [2.0, 1.0])
    assert rho is None
    assert p_value is None
    assert "fewer than 3" in note


def test_correlation_from_hand_made_records(tiny_setup, full_run):
    records = healthy_records(full_run)
    config = full_config(tiny_setup, full_run)
    traces = {"ga": 10.0, "npo": 30.0, "sare": 20.0}
    relearned = {"ga": 0.70, "npo": 0.90, "sare": 0.60}
    unlearned, base = 0.50, 1.00
    records["seed=0/base/probe/hallucination"]["hallucination_probability"] = base
    for method in METHODS:
        records[f"seed=0/{method}/probe/trace"]["hessian_trace"]["trace"] = traces[method]
        records[f"seed=0/{method}/probe/hallucination"]["hallucination_probability"] = unlearned
        key = f"seed=0/{method}/relearn/k={config.relearn_samples}/steps={config.relearn_steps[-1]}"
        records[key]["hallucination_probability"] = relearned[method]
    population, description = correlation_population(full_rows(records, config), config)
    entries = sharpness_correlations(population, description)
    entry = next(e for e in entries if e["measure"] == "hessian_trace" and e["target"] == "relearn_probability_resurgence")
    resurgence = [(relearned[m] - unlearned) / (base - unlearned) for m in METHODS]
    expected_rho, expected_p = hand_spearman([traces[m] for m in METHODS], resurgence)
    assert entry["n"] == 3
    assert entry["rho"] == pytest.approx(expected_rho)
    assert entry["p_value"] == pytest.approx(expected_p)
    assert f"rho = {expected_rho:+.3f}" in entry["statement"]
    assert entry["rho_by_seed"] == {0: pytest.approx(expected_rho)}


def test_full_rows_rank_order(tiny_setup, full_run):
    records = healthy_records(full_run)
    config = full_config(tiny_setup, full_run)
    last = f"k={config.relearn_samples}/steps={config.relearn_steps[-1]}"
    for method, value in (("ga", 0.3), ("npo", 0.1), ("sare", 0.2)):
        records[f"seed=0/{method}/relearn/{last}"]["chair"]["chair_i"] = value
    rows = {row["model"]: row for row in full_rows(records, config)}
    assert [rows[m]["rank"] for m in ("npo", "sare", "ga")] == [1, 2, 3]
    assert rows["base"]["rank"] is None


def test_config_full_copies(tiny_setup, tmp_path):
    config = full_config(tiny_setup, tmp_path)
    changed = dataclasses.replace(config, seed=5)
    assert changed.seeds == (5,)
    repeated = dataclasses.replace(config, full=dataclasses.replace(TINY_FULL, seeds=(0, 1)))
    assert repeated.seeds == (0, 1)


def test_cli_output_dir_by_profile(tmp_path):
    from halluc_bench.cli import run_config

    parser = build_parser()
    assert run_config(parser.parse_args(["run"])).output_dir == Path("runs/default")
    assert run_config(parser.parse_args(["run", "--profile", "full"])).output_dir == Path("runs/full")
    chosen = tmp_path / "mine"
    assert run_config(parser.parse_args(["run", "--profile", "full", "--output-dir", str(chosen)])).output_dir == chosen
