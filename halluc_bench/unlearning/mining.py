"""Mine forget and retain examples from a model's own captions.

Every mention of an object that the image's annotations do not contain is a forget span (a
hallucination); mentions of annotated objects are faithful spans. Captions with at least one
hallucinated mention go to the forget set, the others to the retain set.
"""

from __future__ import annotations

import logging
from typing import Callable, Collection, Mapping, Protocol, Sequence

import torch
from PIL import Image

from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.unlearning.data import CAPTION_QUESTION, SpanExample, UnlearningData

logger = logging.getLogger(__name__)

# caption -> [(canonical object name, start, end)], with character offsets into the caption.
MentionFinder = Callable[[str], Sequence[tuple[str, int, int]]]


class AnnotatedImages(Protocol):
    """The part of a world that mining reads: the images of a split and their annotated object names."""

    def objects(self, split: str, image_id: int) -> list[str]: ...

    def load_image(self, split: str, image_id: int) -> Image.Image: ...

    def image_ids(self, split: str) -> list[int]: ...


def chair_mention_finder(synonyms_path: str | None = None, lemmatizer: str = "wordnet") -> MentionFinder:
    """Return a finder that uses CHAIR's object extraction (synonym list, lemmas, two-word objects)."""
    from halluc_bench.tasks.chair import extract_objects, load_synonyms

    synonyms = load_synonyms(synonyms_path)

    def find_mentions(caption: str) -> list[tuple[str, int, int]]:
        return [(mention.object, *mention.span) for mention in extract_objects(caption, synonyms, lemmatizer)]

    return find_mentions


def mine_spans(
    image_id: int,
    caption: str,
    present_objects: Collection[str],
    find_mentions: MentionFinder,
    question: str = CAPTION_QUESTION,
) -> SpanExample:
    """Split the object mentions of one caption into hallucinated (forget) and faithful spans.

    Raises ValueError when ``find_mentions`` returns a span outside the caption.
    """
    present = set(present_objects)
    forget, faithful = [], []
    for obj, start, end in find_mentions(caption):
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"mention finder returned span ({start}, {end}) for {obj!r} outside caption {caption!r}")
        (faithful if obj in present else forget).append((start, end))
    return SpanExample(image_id, caption, tuple(sorted(set(forget))), tuple(sorted(set(faithful))), question)


def split_examples(
    captions: Mapping[int, str | Sequence[str]],
    present_objects: Mapping[int, Collection[str]],
    find_mentions: MentionFinder,
    question: str = CAPTION_QUESTION,
) -> tuple[list[SpanExample], list[SpanExample]]:
    """Return (forget, retain) examples for every caption; repeated captions of an image count once.

    Raises KeyError for an image id that has captions but no annotation entry.
    """
    forget: list[SpanExample] = []
    retain: list[SpanExample] = []
    seen: set[str] = set()
    for image_id, texts in captions.items():
        if image_id not in present_objects:
            raise KeyError(f"image id {image_id} has a caption but no annotated objects; pass its objects (an empty list is fine)")
        for caption in [texts] if isinstance(texts, str) else list(texts):
            example = mine_spans(image_id, caption, present_objects[image_id], find_mentions, question)
            if example.key() in seen:
                continue
            seen.add(example.key())
            (forget if example.is_hallucinated else retain).append(example)
    return forget, retain


def mine_unlearning_data(
    vlm: VisionLanguageModel,
    world: AnnotatedImages,
    split: str,
    image_ids: Sequence[int] | None = None,
    captions: Mapping[int, str | Sequence[str]] | None = None,
    *,
    find_mentions: MentionFinder | None = None,
    question: str = CAPTION_QUESTION,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> UnlearningData:
    """Build forget/retain data for ``image_ids`` of ``split`` (default: every image of the split).

    ``captions`` maps image ids to one or more captions; by default the model captions each
    image by greedy decoding with ``question``. ``find_mentions`` defaults to CHAIR's object
    extraction. The pixels of every image are preprocessed once and stored with the data.
    """
    ids = list(image_ids) if image_ids is not None else list(world.image_ids(split))
    if not ids:
        raise ValueError(f"split {split!r} has no images to mine")
    pixels = vlm.pixel_values([world.load_image(split, image_id) for image_id in ids])  # (images, 3, H, W)
    if captions is None:
        generated = vlm.generate_captions(pixels, question, max_new_tokens=max_new_tokens, batch_size=batch_size)
        captions = dict(zip(ids, generated))
    unknown = sorted(set(captions) - set(ids))
    if unknown:
        raise ValueError(f"captions given for image ids {unknown[:10]} that are not among the images to mine")
    present = {image_id: world.objects(split, image_id) for image_id in ids}
    forget, retain = split_examples(captions, present, find_mentions or chair_mention_finder(), question)
    _log_summary(split, forget, retain)
    pixel_map: dict[int, torch.Tensor] = {image_id: pixels[row] for row, image_id in enumerate(ids)}
    return UnlearningData(forget, retain, pixel_map)


def _log_summary(split: str, forget: list[SpanExample], retain: list[SpanExample]) -> None:
    spans = sum(len(example.forget_spans) for example in forget)
    total = len(forget) + len(retain)
    logger.info(
        "mined %s: %d captions, %d hallucinated (%.1f%%) with %d hallucinated mentions, %d faithful",
        split, total, len(forget), 100.0 * len(forget) / max(total, 1), spans, len(retain),
    )
