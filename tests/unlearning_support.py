"""Small forget/retain data and a hallucinating tiny model for the unlearning tests."""

from __future__ import annotations

import copy

import torch

from halluc_bench.models.vlm import VisionLanguageModel, token_log_probs
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch, retain_batch


def spans_of(caption: str, words: list[str]) -> tuple[tuple[int, int], ...]:
    """Character spans of the first occurrence of each word (as a whole word) in ``caption``."""
    padded = f" {caption} "
    spans = []
    for word in words:
        start = padded.index(f" {word} ") if f" {word} " in padded else padded.index(f" {word}")
        spans.append((start, start + len(word)))
    return tuple(spans)


def example(image_id: int, caption: str, hallucinated: list[str], faithful: list[str]) -> SpanExample:
    return SpanExample(image_id, caption, spans_of(caption, hallucinated), spans_of(caption, faithful))


def make_data(vlm: VisionLanguageModel, images) -> UnlearningData:
    """Four forget captions (one hallucinated object each) and four faithful captions of four images."""
    pixels = vlm.pixel_values(images)  # (4, 3, 16, 16)
    forget = [
        example(0, "a red fork and a blue knife on the left", ["knife"], ["fork"]),
        example(1, "a blue cup and a dog on the right", ["dog"], ["cup"]),
        example(2, "a green bowl and a frisbee on the top", ["frisbee"], ["bowl"]),
        example(3, "a fork and a cup and a knife", ["cup", "knife"], ["fork"]),
    ]
    retain = [
        example(0, "a red fork on the left", [], ["fork"]),
        example(1, "a blue cup on the right", [], ["cup"]),
        example(2, "a green bowl on the top", [], ["bowl"]),
        example(3, "a fork on the bottom", [], ["fork"]),
    ]
    return UnlearningData(forget, retain, {image_id: pixels[image_id] for image_id in range(4)})


_TAUGHT: dict[str, tuple[VisionLanguageModel, UnlearningData]] = {}


def taught_setup(tiny_vlm: VisionLanguageModel, tiny_images) -> tuple[VisionLanguageModel, UnlearningData]:
    """Return (a tiny model that produces the forget captions, the data), built once per session.

    The ``tiny_vlm`` fixture is seeded, so every call would build the same model; callers must
    not modify the returned model in place.
    """
    if "taught" not in _TAUGHT:
        data = make_data(tiny_vlm, tiny_images)
        _TAUGHT["taught"] = (teach_captions(tiny_vlm, data), data)
    return _TAUGHT["taught"]


def teach_captions(vlm: VisionLanguageModel, data: UnlearningData, steps: int = 25, lr: float = 2e-2) -> VisionLanguageModel:
    """Return a copy of ``vlm`` fine-tuned on every caption, so that it produces the hallucinations."""
    model = copy.deepcopy(vlm.model)
    model.train()
    examples = [*data.forget, *data.retain]
    batch = vlm.encode(
        [vlm.prompt(item.question) for item in examples],
        [item.caption for item in examples],
        data.pixel_batch(examples),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        logp, mask = token_log_probs(model(**batch.model_inputs()).logits, batch.labels)
        (-(logp * mask).sum() / mask.sum()).backward()
        optimizer.step()
    model.eval()
    return VisionLanguageModel(model, vlm.processor, name="taught")


@torch.no_grad()
def forget_log_prob(vlm: VisionLanguageModel, data: UnlearningData) -> float:
    """Summed log-probability of every hallucinated mention token of the forget set."""
    vlm.model.eval()
    batch = forget_batch(vlm, data, data.forget)
    logp, mask = token_log_probs(vlm.model(**batch.model_inputs()).logits, batch.labels)
    return float((logp * mask).sum())


@torch.no_grad()
def retain_nll(vlm: VisionLanguageModel, data: UnlearningData) -> float:
    vlm.model.eval()
    batch = retain_batch(vlm, data, data.retain)
    logp, mask = token_log_probs(vlm.model(**batch.model_inputs()).logits, batch.labels)
    return float(-(logp * mask).sum() / mask.sum())


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


def with_nan_loss(unlearner, bad_call: int):
    """Make ``unlearner.loss`` return a NaN forget term on call number ``bad_call`` (0-based)."""
    original = unlearner.loss
    calls = [0]

    def loss(model, forget, retain, reference):
        terms = original(model, forget, retain, reference)
        if calls[0] == bad_call and terms.forget is not None:
            terms.forget = terms.forget * float("nan")
        calls[0] += 1
        return terms

    unlearner.loss = loss
    return unlearner
