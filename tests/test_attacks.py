"""Attacks on a tiny LLaVA: relearning, weight noise, worst-case perturbation, quantization, summaries."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from halluc_bench.attacks import (
    ATTACKS,
    benign_relearn,
    choose_relearn_examples,
    examples_hash,
    gaussian_weight_noise,
    half_return_budget,
    hallucination_probability,
    quantizable_weights,
    quantize_tensor,
    quantize_weights,
    relative_noise,
    relearn,
    resurgence_area,
    resurgence_ratio,
    summarize_resurgence,
    worst_case_perturbation,
)
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch


@pytest.fixture
def tiny_data(tiny_vlm, tiny_images):
    pixels = tiny_vlm.pixel_values(tiny_images)

    def example(image_id: int, caption: str, hallucinated: list[str]) -> SpanExample:
        spans = tuple((caption.index(word), caption.index(word) + len(word)) for word in hallucinated)
        return SpanExample(image_id, caption, forget_spans=spans)

    forget = [
        example(0, "a red fork and a knife", ["knife"]),
        example(1, "a blue cup and a bowl", ["bowl"]),
        example(2, "a green dog and a frisbee", ["frisbee"]),
    ]
    retain = [SpanExample(3, "a cup on the left"), SpanExample(0, "a red fork on the right")]
    return UnlearningData(forget, retain, {index: pixels[index] for index in range(len(tiny_images))})


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, state[name]) for name, value in model.state_dict().items())


# ----------------------------------------------------------------------------- relearning
def test_relearn_checkpoints_per_step(tiny_vlm, tiny_data):
    before = state_copy(tiny_vlm.model)
    models = relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[20, 0, 5], learning_rate=1e-2, batch_size=2, seed=0)
    assert list(models) == [0, 5, 20]
    assert same_state(tiny_vlm.model, before)
    assert same_state(models[0].model, before)
    assert models[5].model is not models[20].model
    assert len(models.info.losses) == 20


def test_relearn_raises_forget_probability(tiny_vlm, tiny_data):
    models = relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[0, 5, 20], learning_rate=1e-2, batch_size=2, seed=0)
    probabilities = [hallucination_probability(models[step], tiny_data, tiny_data.forget) for step in (0, 5, 20)]
    assert probabilities[0] < probabilities[1]
    assert probabilities[1] < probabilities[2]


def test_relearn_deterministic_seed(tiny_vlm, tiny_data):
    first = relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[4], learning_rate=1e-2, batch_size=2, seed=7)
    second = relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[4], learning_rate=1e-2, batch_size=2, seed=7)
    other = relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[4], learning_rate=1e-2, batch_size=2, seed=8)
    assert same_state(second[4].model, state_copy(first[4].model))
    assert not same_state(other[4].model, state_copy(first[4].model))


def test_relearn_records_hashes(tiny_vlm, tiny_data):
    models = relearn(tiny_vlm, tiny_data, tiny_data.forget[:2], steps=[1], learning_rate=1e-3, batch_size=4, seed=0)
    assert models.info.sample_hash == examples_hash(tiny_data.forget[:2])
    assert models.info.sample_hash == examples_hash(list(reversed(tiny_data.forget[:2])))
    assert models.info.retain_hash == examples_hash(tiny_data.retain)
    assert models.info.effective_batch_size == 2
    assert models.info.to_dict()["config"]["learning_rate"] == 1e-3


def test_relearn_rejects_retain_overlap(tiny_vlm, tiny_data):
    overlapping = [tiny_data.retain[0]]
    with pytest.raises(ValueError, match="retain set"):
        benign_relearn(tiny_vlm, tiny_data, overlapping, steps=[1], learning_rate=1e-3, batch_size=1, seed=0)


def test_relearn_rejects_wrong_kind(tiny_vlm, tiny_data):
    faithful = [SpanExample(1, "a blue cup on the left")]
    with pytest.raises(ValueError, match="hallucinated"):
        relearn(tiny_vlm, tiny_data, faithful, steps=[1], learning_rate=1e-3, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="faithful"):
        benign_relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[1], learning_rate=1e-3, batch_size=1, seed=0)


def test_benign_relearn_runs(tiny_vlm, tiny_data):
    faithful = [SpanExample(1, "a blue cup on the left"), SpanExample(2, "a green dog")]
    models = benign_relearn(tiny_vlm, tiny_data, faithful, steps=[2], learning_rate=1e-3, batch_size=2, seed=0)
    assert models.info.config.benign
    assert "benign" in models[2].name


def test_relearn_rejects_bad_config(tiny_vlm, tiny_data):
    with pytest.raises(ValueError, match="steps"):
        relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[], learning_rate=1e-3, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="learning_rate"):
        relearn(tiny_vlm, tiny_data, tiny_data.forget, steps=[1], learning_rate=0.0, batch_size=1, seed=0)


def test_choose_examples_excludes(tiny_data):
    chosen = choose_relearn_examples(tiny_data.forget, 2, seed=0, exclude=tiny_data.forget[:1])
    assert len(chosen) == 2
    assert tiny_data.forget[0] not in chosen
    assert chosen == choose_relearn_examples(tiny_data.forget, 2, seed=0, exclude=tiny_data.forget[:1])
    with pytest.raises(ValueError, match="k=3"):
        choose_relearn_examples(tiny_data.forget, 3, seed=0, exclude=tiny_data.forget[:1])


# ----------------------------------------------------------------------------- weight noise
def test_relative_noise_norm_large_tensor():
    weight = torch.randn(300, 300, generator=torch.Generator().manual_seed(0))
    delta = relative_noise(weight, 0.05, torch.Generator().manual_seed(1))
    # ‖δ‖/‖W‖ has mean ≈ σ and relative spread ≈ 1/sqrt(2n) = 0.0024 at n = 90,000.
    assert float(delta.norm() / weight.norm()) == pytest.approx(0.05, rel=0.02)


def test_weight_noise_per_tensor_sigma(tiny_vlm):
    sigma = 0.1
    (noisy,) = gaussian_weight_noise(tiny_vlm, sigma, draws=1, seed=0)
    original = dict(tiny_vlm.model.named_parameters())
    for name, parameter in noisy.model.named_parameters():
        weight = original[name].detach()
        if float(weight.norm()) == 0.0:
            continue
        measured = float((parameter.detach() - weight).norm() / weight.norm())
        spread = 1 / math.sqrt(2 * weight.numel())
        assert abs(measured / sigma - 1) < 6 * spread, name


def test_weight_noise_draws_and_input(tiny_vlm):
    before = state_copy(tiny_vlm.model)
    first = gaussian_weight_noise(tiny_vlm, 0.05, draws=2, seed=3)
    again = gaussian_weight_noise(tiny_vlm, 0.05, draws=2, seed=3)
    assert same_state(tiny_vlm.model, before)
    assert len(first) == 2
    assert same_state(again[0].model, state_copy(first[0].model))
    assert not same_state(first[1].model, state_copy(first[0].model))


def test_weight_noise_name_filter(tiny_vlm):
    (noisy,) = gaussian_weight_noise(tiny_vlm, 0.05, seed=0, params="language_model")
    original = dict(tiny_vlm.model.named_parameters())
    for name, parameter in noisy.model.named_parameters():
        changed = not torch.equal(parameter, original[name])
        in_language_model = "language_model" in name or name.startswith("lm_head")
        assert changed == in_language_model, name


# ----------------------------------------------------------------------------- worst case
def test_worst_case_global_ball(tiny_vlm, tiny_data):
    before = state_copy(tiny_vlm.model)
    result = worst_case_perturbation(tiny_vlm, tiny_data, tiny_data.forget, radius=0.5, steps=5)
    original = dict(tiny_vlm.model.named_parameters())
    squared = sum(float(((p.detach() - original[n].detach()) ** 2).sum()) for n, p in result.vlm.model.named_parameters())
    assert math.sqrt(squared) <= 0.5 * (1 + 1e-5)
    assert same_state(tiny_vlm.model, before)
    assert result.log_likelihood_after > result.log_likelihood_before


def test_worst_case_raises_hallucination(tiny_vlm, tiny_data):
    result = worst_case_perturbation(tiny_vlm, tiny_data, tiny_data.forget, radius=0.5, steps=5)
    before = hallucination_probability(tiny_vlm, tiny_data, tiny_data.forget)
    after = hallucination_probability(result.vlm, tiny_data, tiny_data.forget)
    assert after > before


def test_worst_case_per_layer_balls(tiny_vlm, tiny_data):
    result = worst_case_perturbation(
        tiny_vlm, tiny_data, tiny_data.forget, radius=0.01, steps=3, scope="per_layer", relative=True
    )
    original = dict(tiny_vlm.model.named_parameters())
    layers: dict[str, list[str]] = {}
    for name, _ in result.vlm.model.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    perturbed = dict(result.vlm.model.named_parameters())
    for layer, names in layers.items():
        change = math.sqrt(sum(float(((perturbed[n].detach() - original[n].detach()) ** 2).sum()) for n in names))
        weight = math.sqrt(sum(float((original[n].detach() ** 2).sum()) for n in names))
        assert change <= 0.01 * weight * (1 + 1e-4) + 1e-7, layer
    assert len(result.group_radii) > 1
    assert all(norm <= radius * (1 + 1e-6) for norm, radius in zip(result.group_norms, result.group_radii))


# ----------------------------------------------------------------------------- quantization
def relative_error(original: torch.Tensor, quantized: torch.Tensor) -> float:
    return float((quantized - original).norm() / original.norm())


def test_quantize_int8_small_int4_larger():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    int8 = relative_error(weight, quantize_tensor(weight, 8, "per_channel"))
    int4 = relative_error(weight, quantize_tensor(weight, 4, "per_channel"))
    assert int8 < 0.01
    assert int4 > 4 * int8


def test_quantize_group_beats_channel():
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    weight[:, 0] *= 20  # one outlier column widens every per-channel range
    channel = relative_error(weight, quantize_tensor(weight, 4, "per_channel"))
    group = relative_error(weight, quantize_tensor(weight, 4, "per_group", group_size=32))
    assert group < channel


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_distinct_levels(bits, scheme):
    weight = torch.randn(8, 96, generator=torch.Generator().manual_seed(2))
    per_channel = quantize_tensor(weight, bits, "per_channel", scheme=scheme)
    per_group = quantize_tensor(weight, bits, "per_group", group_size=40, scheme=scheme)
    for row in range(8):
        assert per_channel[row].unique().numel() <= 2**bits
        for start in range(0, 96, 40):
            assert per_group[row, start : start + 40].unique().numel() <= 2**bits


def test_quantize_zero_row_stays_zero():
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    weight[1] = 0.0
    quantized = quantize_tensor(weight, 4, "per_group", group_size=8)
    assert torch.count_nonzero(quantized[1]) == 0


def test_quantize_model_touches_linear_weights_only(tiny_vlm):
    before = state_copy(tiny_vlm.model)
    quantized = quantize_weights(tiny_vlm, 4, granularity="per_group", group_size=8)
    targets = {name for name, _ in quantizable_weights(quantized.model)}
    assert "lm_head.weight" not in targets
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in targets
    assert "model.multi_modal_projector.linear_1.weight" in targets
    for name, value in quantized.model.state_dict().items():
        if name in targets:
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name  # embeddings, norms, biases, lm_head, patch conv
    assert same_state(tiny_vlm.model, before)


def test_quantize_rejects_bad_options(tiny_vlm):
    with pytest.raises(ValueError, match="bits"):
        quantize_weights(tiny_vlm, 1)
    with pytest.raises(ValueError, match="granularity"):
        quantize_weights(tiny_vlm, 4, granularity="per_row")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA GPU")
def test_quantize_bitsandbytes_needs_gpu(tiny_vlm):
    with pytest.raises(RuntimeError, match="CUDA"):
        quantize_weights(tiny_vlm, 4, backend="bitsandbytes")


# ----------------------------------------------------------------------------- summaries
def test_resurgence_ratio_values():
    assert resurgence_ratio(base=0.8, unlearned=0.2, attacked=0.5) == pytest.approx(0.5)
    assert resurgence_ratio(base=0.8, unlearned=0.2, attacked=0.2) == 0.0
    assert resurgence_ratio(base=0.8, unlearned=0.2, attacked=0.8) == pytest.approx(1.0)


def test_resurgence_ratio_guard():
    assert resurgence_ratio(base=0.3, unlearned=0.3, attacked=0.5) is None
    assert resurgence_ratio(base=0.3, unlearned=0.3 - 1e-9, attacked=0.5) is None


def test_resurgence_area_trapezoid():
    # Trapezoids over budgets 0, 10, 20 normalised to 0, 0.5, 1: 0.5·0.2 + 0.5·0.6 = 0.4.
    assert resurgence_area([0, 10, 20], [0.0, 0.4, 0.8]) == pytest.approx(0.4)
    assert resurgence_area([10, 20], [0.4, 0.8]) == pytest.approx(0.4)


def test_half_return_budget_interpolates():
    assert half_return_budget([0, 10, 20], [0.0, 0.4, 0.8]) == pytest.approx(12.5)
    assert half_return_budget([5, 10], [0.1, 0.3]) is None
    with pytest.raises(ValueError, match="increasing"):
        half_return_budget([10, 5], [0.1, 0.3])


def test_summarize_resurgence_guarded():
    summary = summarize_resurgence([0, 10], [0.3, 0.3], base=0.3, unlearned=0.3)
    assert summary.ratios == [None, None]
    assert summary.area is None
    assert summary.half_return_budget is None


def test_hallucination_probability_manual(tiny_vlm, tiny_data):
    example = tiny_data.forget[0]
    batch = forget_batch(tiny_vlm, tiny_data, [example])
    with torch.no_grad():
        probabilities = torch.softmax(tiny_vlm.model.eval()(**batch.model_inputs()).logits[0].double(), dim=-1)
    positions = (batch.labels[0] != -100).nonzero().flatten().tolist()
    expected = sum(float(probabilities[p - 1, batch.labels[0, p]]) for p in positions) / len(positions)
    assert len(positions) >= 1
    assert hallucination_probability(tiny_vlm, tiny_data, [example]) == pytest.approx(expected, rel=1e-5)


def test_attack_registry_names():
    assert {"relearn", "benign_relearn", "weight_noise", "worst_case", "quantize"} <= set(ATTACKS.names())
    assert ATTACKS.get("relearn") is relearn
