"""Forget and retain data: captions with character spans of object mentions.

A :class:`SpanExample` is one caption of one image with the spans of its hallucinated
object mentions (forget) and of its faithful ones. Batches label tokens, not whole
captions: forget batches label only hallucinated mentions, retain batches label every
other caption token.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Sequence

import torch

from halluc_bench.models.vlm import Span, TokenBatch, VisionLanguageModel

CAPTION_QUESTION = "Describe the image."  # the captioning instruction used for mining and training


@dataclass(frozen=True)
class SpanExample:
    """One caption of one image, with character spans of its object mentions."""

    image_id: int
    caption: str
    forget_spans: tuple[Span, ...] = ()  # hallucinated object mentions
    faithful_spans: tuple[Span, ...] = ()  # mentions of objects that are in the image
    question: str = CAPTION_QUESTION

    def __post_init__(self) -> None:
        for start, end in (*self.forget_spans, *self.faithful_spans):
            if not 0 <= start < end <= len(self.caption):
                raise ValueError(f"span ({start}, {end}) lies outside caption {self.caption!r} of image {self.image_id}")

    @property
    def is_hallucinated(self) -> bool:
        return bool(self.forget_spans)

    def key(self) -> str:
        """A stable content hash of the example, used to prove forget and retain sets disjoint."""
        payload = json.dumps([self.image_id, self.question, self.caption, self.forget_spans], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class UnlearningData:
    """Forget and retain examples plus the preprocessed pixels of every image they use."""

    forget: list[SpanExample]
    retain: list[SpanExample]
    pixels: dict[int, torch.Tensor] = field(repr=False)  # image_id -> (3, height, width)

    def __post_init__(self) -> None:
        missing = sorted({e.image_id for e in (*self.forget, *self.retain)} - set(self.pixels))
        if missing:
            raise ValueError(f"no pixel values for image ids {missing[:10]} ({len(missing)} in all)")
        overlap = {e.key() for e in self.forget} & {e.key() for e in self.retain}
        if overlap:
            raise ValueError(f"{len(overlap)} examples are in both the forget and the retain set")

    def fingerprint(self, which: str) -> str:
        """Return a hash of the forget or retain set, recorded with results for provenance."""
        examples = {"forget": self.forget, "retain": self.retain}[which]
        digest = hashlib.sha256()
        for key in sorted(example.key() for example in examples):
            digest.update(key.encode())
        return digest.hexdigest()[:16]

    def pixel_batch(self, examples: Sequence[SpanExample]) -> torch.Tensor:
        return torch.stack([self.pixels[example.image_id] for example in examples])  # (batch, 3, H, W)


def forget_batch(vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample]) -> TokenBatch:
    """Encode examples so that only the tokens of hallucinated mentions are labelled."""
    return vlm.encode(
        [vlm.prompt(example.question) for example in examples],
        [example.caption for example in examples],
        data.pixel_batch(examples),
        label_spans=[example.forget_spans for example in examples],
    )


def retain_batch(vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample]) -> TokenBatch:
    """Encode examples so that every caption token except hallucinated mentions is labelled."""
    return vlm.encode(
        [vlm.prompt(example.question) for example in examples],
        [example.caption for example in examples],
        data.pixel_batch(examples),
        exclude_spans=[example.forget_spans for example in examples],
    )
