"""The Unlearner API, its training loop and the baseline objectives, on a tiny LLaVA."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import math

import pytest
import torch

from halluc_bench.models.loader import load_vlm
from halluc_bench.unlearning import (
    UNLEARNERS,
    LoraSettings,
    LossTerms,
    NonFiniteLossError,
    Reference,
    UnlearnerConfig,
    describe_methods,
    make_unlearner,
)
from halluc_bench.unlearning.batches import preference_batch, remove_spans, weighted_span_batch
from halluc_bench.unlearning.cli import add_methods_command
from halluc_bench.unlearning.data import UnlearningData, forget_batch, retain_batch
from halluc_bench.unlearning.methods import GradDiff
from halluc_bench.unlearning.selection import (
    CollapseCriteria,
    GridTrial,
    NoValidLearningRateError,
    caption_collapse,
    run_learning_rate_grid,
    select_learning_rate,
    training_collapse,
)
from unlearning_support import forget_log_prob, same_weights, taught_setup, weights

BUILT_IN = ("ga", "graddiff", "kl", "npo", "simnpo", "dpo", "efuf", "npo_sam")


@pytest.fixture(autouse=True)
def one_thread():
    """Two intra-op threads on a shared 2-core machine make these tiny steps up to 100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def setup(tiny_vlm, tiny_images):
    return taught_setup(tiny_vlm, tiny_images)


# ----------------------------------------------------------------- configuration
def test_config_rejects_zero_steps():
    with pytest.raises(ValueError, match=r"UnlearnerConfig\.steps must be an integer >= 1, got 0"):
        UnlearnerConfig(steps=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", -1.0), ("learning_rate", float("nan")), ("batch_size", 2.5), ("optimizer", "adam"),
     ("max_grad_norm", 0.0), ("mixed_precision", "fp8"), ("loss_dtype", "bfloat16"), ("retain_weight", -0.1)],
)
def test_config_rejects_invalid_field(field, value):
    with pytest.raises(ValueError) as caught:
        UnlearnerConfig(**{field: value})
    assert field in str(caught.value)
    assert repr(value) in str(caught.value)


def test_config_lora_from_dict_and_true():
    assert UnlearnerConfig(lora={"rank": 4}).lora == LoraSettings(rank=4)
    assert UnlearnerConfig(lora=True).lora == LoraSettings()
    assert UnlearnerConfig(lora=None).lora is None


def test_config_rejects_invalid_lora_rank():
    with pytest.raises(ValueError, match="lora.rank"):
        UnlearnerConfig(lora={"rank": 0})


def test_make_unlearner_unknown_field_suggests():
    with pytest.raises(ValueError) as caught:
        make_unlearner("npo", betta=0.2)
    assert "'betta'" in str(caught.value)
    assert "Did you mean 'beta'?" in str(caught.value)


def test_make_unlearner_applies_overrides():
    unlearner = make_unlearner("simnpo", steps=7, delta=0.5)
    assert unlearner.config.steps == 7
    assert unlearner.config.delta == 0.5
    assert unlearner.config.beta == 4.5
    assert unlearner.config.forget_weight == 0.125


def test_method_defaults_match_objectives():
    assert make_unlearner("graddiff").config.forget_weight == 1.0
    assert make_unlearner("graddiff").config.retain_weight == 1.0
    assert make_unlearner("npo").config.beta == 0.1
    assert make_unlearner("efuf").config.forget_weight == 0.3
    assert make_unlearner("ga").config.retain_weight == 0.0


# ----------------------------------------------------------------- closed forms
def test_npo_forget_term_at_reference(setup):
    vlm, data = setup
    unlearner = make_unlearner("npo")
    batch = forget_batch(vlm, data, data.forget)
    terms = unlearner.loss(copy.deepcopy(vlm.model), batch, None, Reference(vlm.model))
    assert terms.retain is None
    assert terms.forget.item() == pytest.approx(2 / 0.1 * math.log(2), abs=1e-4)
    assert terms.forget.item() == pytest.approx(13.863, abs=1e-3)


def test_dpo_loss_at_reference(setup):
    vlm, data = setup
    unlearner = make_unlearner("dpo")
    batch = preference_batch(vlm, data, data.forget)
    terms = unlearner.loss(copy.deepcopy(vlm.model), batch, None, Reference(vlm.model))
    assert terms.forget.item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("name", [*BUILT_IN, "sare"])
def test_one_step_lowers_forget_log_prob(setup, name):
    vlm, data = setup
    before = forget_log_prob(vlm, data)
    result = make_unlearner(name, steps=1, batch_size=4, learning_rate=1e-3).unlearn(vlm, data, progress=False)
    assert forget_log_prob(result.vlm, data) < before


def test_simnpo_without_reference(setup):
    vlm, data = setup
    assert make_unlearner("simnpo").needs_reference is False
    terms = make_unlearner("simnpo").loss(vlm.model, forget_batch(vlm, data, data.forget), None, None)
    assert torch.isfinite(terms.forget)


def test_kl_retain_term_zero_at_reference(setup):
    vlm, data = setup
    terms = make_unlearner("kl").loss(copy.deepcopy(vlm.model), None, retain_batch(vlm, data, data.retain), Reference(vlm.model))
    assert terms.forget is None
    assert terms.retain.item() == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------- precision
def test_losses_fp32_with_bf16_model(setup):
    vlm, data = setup
    model = copy.deepcopy(vlm.model).to(torch.bfloat16)
    forget = forget_batch(vlm, data, data.forget).to("cpu", torch.bfloat16)
    retain = retain_batch(vlm, data, data.retain).to("cpu", torch.bfloat16)
    for name in ("graddiff", "kl", "npo", "simnpo"):
        terms = make_unlearner(name).loss(model, forget, retain, Reference(model))
        assert terms.forget.dtype == torch.float32, name
        assert terms.retain.dtype == torch.float32, name


def test_unlearn_runs_bf16_model(setup):
    vlm, data = setup
    bf16 = type(vlm)(copy.deepcopy(vlm.model).to(torch.bfloat16), vlm.processor)
    result = make_unlearner("npo", steps=2, batch_size=2).unlearn(bf16, data, progress=False)
    assert next(result.vlm.model.parameters()).dtype == torch.bfloat16
    assert all(math.isfinite(row.total_loss) for row in result.log)


@pytest.mark.parametrize("name", ["graddiff", "sare"])
def test_fp16_autocast_with_loss_scaler(setup, name):
    vlm, data = setup
    before = forget_log_prob(vlm, data)
    result = make_unlearner(name, steps=2, batch_size=2, learning_rate=1e-3, mixed_precision="fp16").unlearn(
        vlm, data, progress=False
    )
    assert all(math.isfinite(row.total_loss) and math.isfinite(row.grad_norm) for row in result.log)
    assert forget_log_prob(result.vlm, data) < before


# ----------------------------------------------------------------- the training loop
def test_log_separates_forget_and_retain(setup):
    vlm, data = setup
    result = make_unlearner("graddiff", steps=3, batch_size=2).unlearn(vlm, data, progress=False)
    assert [row.step for row in result.log] == [0, 1, 2]
    for row in result.log:
        assert row.forget_loss < 0  # -NLL of the forget tokens
        assert row.retain_loss > 0  # NLL of the retain tokens
        assert row.total_loss == pytest.approx(row.forget_loss + row.retain_loss, rel=1e-6)
        assert row.seconds > 0


def test_result_records_fingerprints_and_config(setup):
    vlm, data = setup
    result = make_unlearner("ga", steps=1, seed=3).unlearn(vlm, data, progress=False)
    assert result.forget_fingerprint == data.fingerprint("forget")
    assert result.retain_fingerprint == data.fingerprint("retain")
    assert result.forget_fingerprint != result.retain_fingerprint
    assert result.config["seed"] == 3
    assert result.method == "ga"
    assert result.completed_steps == 1
    assert result.wall_time_s > 0


def test_unlearn_rejects_overlapping_sets(setup):
    vlm, data = setup
    overlapping = copy.copy(data)
    overlapping.retain = [*data.retain, data.forget[0]]  # bypasses the constructor's check
    with pytest.raises(ValueError, match="both the forget and the retain set"):
        make_unlearner("ga", steps=1).unlearn(vlm, overlapping, progress=False)


def test_unlearn_rejects_empty_retain_when_needed(setup):
    vlm, data = setup
    forget_only = UnlearningData(data.forget, [], data.pixels)
    with pytest.raises(ValueError, match="retain set is empty"):
        make_unlearner("graddiff", steps=1).unlearn(vlm, forget_only, progress=False)
    assert make_unlearner("ga", steps=1).unlearn(vlm, forget_only, progress=False).completed_steps == 1


def test_unlearn_leaves_input_model_unchanged(setup):
    vlm, data = setup
    before = weights(vlm.model)
    result = make_unlearner("graddiff", steps=2).unlearn(vlm, data, progress=False)
    assert result.vlm is not vlm
    assert result.vlm.model is not vlm.model
    assert same_weights(weights(vlm.model), before)
    assert not same_weights(weights(result.vlm.model), before)


def test_full_finetuning_freezes_vision_tower(setup):
    vlm, data = setup
    result = make_unlearner("graddiff", steps=2).unlearn(vlm, data, progress=False)
    before, after = weights(vlm.model), weights(result.vlm.model)
    vision = [name for name in before if "vision_tower" in name]
    language = [name for name in before if "language_model" in name]
    assert all(torch.equal(before[name], after[name]) for name in vision)
    assert any(not torch.equal(before[name], after[name]) for name in language)
    assert all(parameter.requires_grad for parameter in result.vlm.model.parameters())


def test_same_seed_same_weights(setup):
    vlm, data = setup
    first = make_unlearner("npo", steps=4, batch_size=2, seed=5).unlearn(vlm, data, progress=False)
    second = make_unlearner("npo", steps=4, batch_size=2, seed=5).unlearn(vlm, data, progress=False)
    other = make_unlearner("npo", steps=4, batch_size=2, seed=6).unlearn(vlm, data, progress=False)
    assert same_weights(weights(first.vlm.model), weights(second.vlm.model))
    assert not same_weights(weights(first.vlm.model), weights(other.vlm.model))


class _NaNAtStep(GradDiff):
    """GradDiff whose loss turns NaN on a chosen call."""

    name = "nan-at-step"

    def __init__(self, bad_call: int, **overrides):
        super().__init__(**overrides)
        self.bad_call = bad_call
        self.calls = 0

    def loss(self, model, forget, retain, reference) -> LossTerms:
        terms = super().loss(model, forget, retain, reference)
        self.calls += 1
        if self.calls == self.bad_call + 1:
            terms.forget = terms.forget * float("nan")
        return terms


def test_nonfinite_loss_stops_and_keeps_weights(setup):
    vlm, data = setup
    with pytest.raises(NonFiniteLossError) as caught:
        _NaNAtStep(bad_call=2, steps=5, batch_size=2).unlearn(vlm, data, progress=False)
    error = caught.value
    assert "at step 2" in str(error)
    assert "forget loss is nan" in str(error)
    assert error.step == 2
    assert error.result.completed_steps == 2
    reference = make_unlearner("graddiff", steps=2, batch_size=2).unlearn(vlm, data, progress=False)
    assert same_weights(weights(error.result.vlm.model), weights(reference.vlm.model))


# ----------------------------------------------------------------- LoRA and saving
def test_lora_merges_into_plain_checkpoint(setup, tmp_path):
    vlm, data = setup
    lora = LoraSettings(rank=2, alpha=4.0)
    result = make_unlearner("npo", steps=2, batch_size=2, learning_rate=1e-2, lora=lora).unlearn(vlm, data, progress=False)
    names = set(weights(result.vlm.model))
    assert names == set(weights(vlm.model))
    assert not any("lora" in name for name in names)
    before, after = weights(vlm.model), weights(result.vlm.model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed
    assert all("language_model" in name and "proj" in name for name in changed)
    saved = result.save(tmp_path / "unlearned")
    summary = json.loads((saved / "unlearning.json").read_text())
    assert summary["method"] == "npo"
    assert summary["config"]["lora"]["rank"] == 2
    assert len(summary["log"]) == 2
    loaded = load_vlm(saved)
    assert same_weights(weights(loaded.model), after)


# ----------------------------------------------------------------- method batches
def test_remove_spans_drops_article_and_connector():
    caption = "a fork and a knife on a dining table"
    start = caption.index("knife")
    assert remove_spans(caption, [(start, start + 5)]) == "a fork on a dining table"


def test_remove_spans_leading_mention():
    caption = "A knife and a fork"
    assert remove_spans(caption, [(2, 7)]) == "A fork"


def test_dpo_pairs_with_retain_caption_of_same_image(setup):
    vlm, data = setup
    batch = preference_batch(vlm, data, data.forget[:1])
    chosen_ids = batch.chosen.input_ids[0][batch.chosen.labels[0] != -100]
    expected = vlm.encode([vlm.prompt(data.retain[0].question)], [data.retain[0].caption], data.pixel_batch(data.retain[:1]))
    assert torch.equal(chosen_ids, expected.input_ids[0][expected.labels[0] != -100])


def test_dpo_falls_back_to_removed_mentions(setup):
    vlm, data = setup
    no_retain = UnlearningData(data.forget, [], data.pixels)
    batch = preference_batch(vlm, no_retain, data.forget[:1])
    chosen = vlm.tokenizer.decode(batch.chosen.input_ids[0][batch.chosen.labels[0] != -100], skip_special_tokens=True)
    assert chosen == "a red fork on the left"


def test_efuf_weights_follow_scorer(setup):
    vlm, data = setup
    examples = data.forget[3:4]  # two hallucinated mentions: "cup" then "knife"
    scores = {examples[0].forget_spans[0]: 0.25, examples[0].forget_spans[1]: 0.75}
    batch = weighted_span_batch(vlm, data, examples, lambda example, span: scores[span])
    targets = batch.tokens.input_ids[0, 1:]
    weighted = {vlm.tokenizer.convert_ids_to_tokens(int(targets[i])): float(batch.forget_weights[0, i])
                for i in torch.nonzero(batch.forget_weights[0]).flatten()}
    assert weighted == {"cup": 0.25, "knife": 0.75}
    faithful = batch.faithful_labels[0][batch.faithful_labels[0] != -100]
    assert vlm.tokenizer.convert_ids_to_tokens(faithful.tolist()) == ["fork"]


def test_efuf_rejects_negative_score(setup):
    vlm, data = setup
    with pytest.raises(ValueError, match="grounding score -1.0"):
        weighted_span_batch(vlm, data, data.forget[:1], lambda example, span: -1.0)


# ----------------------------------------------------------------- describing methods
def test_describe_methods_lists_every_method():
    rows = {row["name"]: row for row in describe_methods()}
    assert set(BUILT_IN) | {"sare"} <= set(rows)
    assert rows["npo"]["hyperparameters"]["beta"] == 0.1
    assert rows["sare"]["hyperparameters"]["rho"] == 0.05
    assert rows["simnpo"]["hyperparameters"]["forget_weight"] == 0.125
    assert rows["sare"]["class"] == "sare.unlearner.SARE"


def test_methods_command_prints_table():
    parser = argparse.ArgumentParser()
    add_methods_command(parser.add_subparsers())
    args = parser.parse_args(["methods"])
    out = io.StringIO()
    assert args.handler(args, stream=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Shared settings: steps=100")
    assert any(line.startswith("simnpo") and "beta=4.5" in line for line in lines)
    assert any(line.startswith("sare") and "perturb='language_model'" in line for line in lines)


def test_methods_command_json():
    parser = argparse.ArgumentParser()
    add_methods_command(parser.add_subparsers())
    args = parser.parse_args(["methods", "--format", "json"])
    out = io.StringIO()
    args.handler(args, stream=out)
    names = [row["name"] for row in json.loads(out.getvalue())]
    assert names == sorted(UNLEARNERS.names())


# ----------------------------------------------------------------- learning-rate selection
def _log(retain_values):
    from halluc_bench.unlearning.base import StepLog

    return [StepLog(i, 0, i, -1.0, value, value - 1.0, 1.0, 0.1) for i, value in enumerate(retain_values)]


def test_training_collapse_detects_retain_rise():
    assert training_collapse(_log([0.5] * 5 + [2.0] * 5)) == "retain loss rose from 0.500 to 2.000"
    assert training_collapse(_log([0.5] * 10)) is None


def test_caption_collapse_detects_repetition():
    captions = ["a fork on the left"] * 3 + ["fork fork fork fork", ""]
    assert caption_collapse(captions) == "2 of 5 captions are empty, too short or repetitive"
    assert caption_collapse(captions[:3]) is None


def test_collapse_criteria_validated():
    with pytest.raises(ValueError, match="window"):
        CollapseCriteria(window=0)


def test_select_learning_rate_prefers_low_hallucination():
    trials = [
        GridTrial(1e-5, hallucination=0.30, utility=0.90),
        GridTrial(1e-4, hallucination=0.10, utility=0.85),
        GridTrial(1e-3, hallucination=0.01, utility=0.40),
        GridTrial(1e-2, hallucination=0.00, utility=0.90, collapse="retain loss rose"),
    ]
    assert select_learning_rate(trials, baseline_utility=0.9, max_utility_drop=0.1).learning_rate == 1e-4


def test_select_learning_rate_raises_when_none_valid():
    trials = [GridTrial(1e-3, hallucination=0.0, utility=0.1), GridTrial(1e-2, 0.0, 0.9, collapse="captions repeat")]
    with pytest.raises(NoValidLearningRateError) as caught:
        select_learning_rate(trials, baseline_utility=0.9)
    assert "lr 0.001: utility 0.1000 below 0.8100" in str(caught.value)
    assert "lr 0.01: captions repeat" in str(caught.value)


def test_grid_runs_each_rate(setup):
    vlm, data = setup

    def trial(rate):
        result = make_unlearner("graddiff", steps=2, learning_rate=rate).unlearn(vlm, data, progress=False)
        return GridTrial(rate, forget_log_prob(result.vlm, data), 1.0, training_collapse(result.log))

    trials = run_learning_rate_grid([1e-4, 1e-3], trial)
    assert [item.learning_rate for item in trials] == [1e-4, 1e-3]
    assert select_learning_rate(trials, baseline_utility=1.0).learning_rate == 1e-3


def test_unlearner_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        UnlearnerConfig().steps = 3
