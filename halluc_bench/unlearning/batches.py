"""Batches for methods that need more than span labels: preference pairs (DPO) and
grounding-weighted spans (EFUF)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from halluc_bench.models.vlm import IGNORE_INDEX, Span, TokenBatch, VisionLanguageModel
from halluc_bench.unlearning.data import SpanExample, UnlearningData

logger = logging.getLogger(__name__)

# Weight of a hallucinated span's ascent term, from 0 (the image may well show it) to 1 (clearly absent).
GroundingScorer = Callable[[SpanExample, Span], float]


def absent_object_score(example: SpanExample, span: Span) -> float:
    """Default grounding score: 1 for every forget span.

    Forget spans are mentions of objects the image's annotations do not contain, so with
    annotations as the grounding source every one of them is clearly absent.
    """
    return 1.0


# ----------------------------------------------------------------- preference pairs
@dataclass
class PreferenceBatch:
    """A faithful caption y_w (chosen) and a hallucinated caption y_l (rejected) per image, whole captions labelled."""

    chosen: TokenBatch
    rejected: TokenBatch

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PreferenceBatch":
        return PreferenceBatch(self.chosen.to(device, dtype), self.rejected.to(device, dtype))

    def __len__(self) -> int:
        return len(self.rejected)


_JOINING_WORDS = r"(?:and|with|or|on|in|of|at|to|near|next|by|is|are)\b"
# An article plus up to two modifiers ("a blue ", "the small red ") right before the mention.
_ARTICLE_BEFORE = re.compile(
    rf"\b(?:a|an|the|some|two|three|several)\s+(?:(?!{_JOINING_WORDS})\w+\s+){{0,2}}$", re.IGNORECASE
)
_CONNECTOR_BEFORE = re.compile(r"(?:\s*,\s*|\s+(?:and|with|or|next to|near)\s+)$", re.IGNORECASE)
_CONNECTOR_AFTER = re.compile(r"^(?:\s*,|\s+(?:and|with|or)\b)", re.IGNORECASE)


def remove_spans(caption: str, spans: Sequence[Span]) -> str:
    """Delete each span with its article, up to two modifiers and one joining word ("and a blue knife").

    A heuristic for English captions: it keeps "a fork and a knife on a table" readable as
    "a fork on a table", but it does not parse the sentence, so other phrasings may be left
    ungrammatical.
    """
    text = caption
    for start, end in sorted(spans, reverse=True):
        article = _ARTICLE_BEFORE.search(text[:start])
        if article:
            start = article.start()
        connector = _CONNECTOR_BEFORE.search(text[:start])
        if connector:
            start = connector.start()
        else:
            following = _CONNECTOR_AFTER.match(text[end:])
            if following:
                end += following.end()
        text = text[:start] + " " + text[end:]
    text = re.sub(r"\s+([,.])", r"\1", re.sub(r"\s+", " ", text)).strip(" ,")
    if text and caption[:1].isupper():
        text = text[0].upper() + text[1:]
    return text


def faithful_caption(example: SpanExample, retain_by_image: dict[int, list[SpanExample]]) -> str:
    """Return y_w for a hallucinated example: a retain caption of the same image, else the caption with its hallucinated mentions removed."""
    same_image = retain_by_image.get(example.image_id)
    if same_image:
        return same_image[0].caption
    return remove_spans(example.caption, example.forget_spans)


def preference_batch(vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample]) -> PreferenceBatch:
    """Pair each hallucinated caption (rejected) with a faithful caption of the same image (chosen)."""
    retain_by_image: dict[int, list[SpanExample]] = {}
    for retained in data.retain:
        retain_by_image.setdefault(retained.image_id, []).append(retained)
    prompts = [vlm.prompt(example.question) for example in examples]
    pixels = data.pixel_batch(examples)
    chosen_texts = [faithful_caption(example, retain_by_image) for example in examples]
    chosen = vlm.encode(prompts, chosen_texts, pixels)
    rejected = vlm.encode(prompts, [example.caption for example in examples], pixels)
    return PreferenceBatch(chosen, rejected)


# ----------------------------------------------------------------- grounding-weighted spans
@dataclass
class WeightedSpanBatch:
    """Hallucinated captions with per-token ascent weights and faithful-span labels (one forward pass).

    ``tokens.labels`` marks every forget token; ``forget_weights`` (batch, seq - 1) is aligned
    with the shifted next-token targets and contains each token's grounding score (0 off-span);
    ``faithful_labels`` (batch, seq) labels the faithful mentions of the same captions.
    """

    tokens: TokenBatch
    forget_weights: torch.Tensor
    faithful_labels: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "WeightedSpanBatch":
        return WeightedSpanBatch(self.tokens.to(device, dtype), self.forget_weights.to(device), self.faithful_labels.to(device))

    def __len__(self) -> int:
        return len(self.tokens)


def weighted_span_batch(
    vlm: VisionLanguageModel,
    data: UnlearningData,
    examples: Sequence[SpanExample],
    scorer: GroundingScorer,
) -> WeightedSpanBatch:
    """Encode hallucinated captions with each forget span's tokens weighted by ``scorer``.

    Raises ValueError when a score is negative or not finite.
    """
    prompts = [vlm.prompt(example.question) for example in examples]
    captions = [example.caption for example in examples]
    pixels = data.pixel_batch(examples)
    tokens = vlm.encode(prompts, captions, pixels, label_spans=[example.forget_spans for example in examples])
    weights = torch.zeros(tokens.labels[:, 1:].shape, dtype=torch.float32)
    max_spans = max(len(example.forget_spans) for example in examples)
    for k in range(max_spans):
        # One span per row at a time, so each token gets the score of the span it belongs to.
        spans = [(example.forget_spans[k],) if k < len(example.forget_spans) else () for example in examples]
        labelled = vlm.encode(prompts, captions, pixels, label_spans=spans).labels[:, 1:] != IGNORE_INDEX
        scores = torch.tensor([_score(scorer, example, k) for example in examples], dtype=torch.float32)
        weights = torch.where(labelled, scores.unsqueeze(1).expand_as(weights), weights)
    faithful = vlm.encode(prompts, captions, pixels, label_spans=[example.faithful_spans for example in examples])
    return WeightedSpanBatch(tokens, weights, faithful.labels)


def _score(scorer: GroundingScorer, example: SpanExample, k: int) -> float:
    if k >= len(example.forget_spans):
        return 0.0
    value = float(scorer(example, example.forget_spans[k]))
    if not (value >= 0 and value != float("inf")):
        raise ValueError(
            f"grounding score {value!r} for span {example.forget_spans[k]} of image {example.image_id} must be finite and >= 0"
        )
    return value
