"""Training examples drawn from a world: captions and yes/no existence questions.

Negatives of yes/no questions can favour absent objects that co-occur with the image's objects,
the kind of object a model hallucinates most. Co-occurrence is counted from the world's own
annotations, so the same code serves the toy world and real COCO.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .captions import article
from .coco import World
from .questions import POPE_TEMPLATE, validate_pope_template

NegativeKind = Literal["cooccurring", "random"]


@dataclass(frozen=True)
class CaptionExample:
    """One reference caption; `hallucinated` names mentioned categories absent from the image."""

    image_id: int
    text: str
    hallucinated: tuple[str, ...]


@dataclass(frozen=True)
class YesNoExample:
    """One existence question with its training answer.

    `kind` records how the object was chosen: "present" (in the image), "cooccurring" (absent, the
    absent category that co-occurs most with the image's objects) or "random" (absent, uniform).
    """

    image_id: int
    question: str
    answer: Literal["yes", "no"]
    object: str
    kind: Literal["present", "cooccurring", "random"]


def existence_question(template: str, name: str) -> str:
    """Fill an existence template, e.g. "Is there an apple in the image?"."""
    return template.format(article=article(name), object=name)


def pick_negative(
    present: Collection[str],
    excluded: Collection[str],
    category_names: Sequence[str],
    cooccurrence: Mapping[str, Mapping[str, int]],
    rng: np.random.Generator,
    cooccurring_share: float,
) -> tuple[str, NegativeKind] | None:
    """Choose one absent category, or None when every category is present or excluded.

    With probability `cooccurring_share` it is the absent category with the highest summed
    co-occurrence count with the present ones, ties broken at random. When no absent category
    co-occurs with them at all, the draw falls back to uniform.
    """
    absent = [name for name in category_names if name not in present and name not in excluded]
    if not absent:
        return None
    if rng.random() < cooccurring_share:
        scores = [sum(cooccurrence.get(name, {}).get(other, 0) for name in present) for other in absent]
        best = max(scores)
        if best > 0:
            tied = [name for name, score in zip(absent, scores) if score == best]
            return tied[int(rng.integers(len(tied)))], "cooccurring"
    return absent[int(rng.integers(len(absent)))], "random"


def caption_examples(world: World, split: str = "train") -> list[CaptionExample]:
    """Return every reference caption of the split in file order.

    Captions from files without a "hallucinated" key (real COCO) count as faithful.
    """
    examples = []
    for annotation in world.captions_coco(split).dataset["annotations"]:
        examples.append(CaptionExample(image_id=annotation["image_id"], text=annotation["caption"],
                                       hallucinated=tuple(annotation.get("hallucinated", ()))))
    return examples


def yes_no_examples(
    world: World,
    split: str = "train",
    *,
    seed: int = 0,
    positives_per_image: int = 3,
    cooccurring_share: float = 0.5,
    template: str = POPE_TEMPLATE,
    cooccurrence_split: str | None = None,
) -> list[YesNoExample]:
    """Build existence questions: per image, up to `positives_per_image` present categories in
    random order, each followed by one distinct absent category while one is left. An image that
    contains every category gets positives only.

    Co-occurrence counts come from `cooccurrence_split` (the same split when None). Each image
    draws from its own generator seeded by (seed, image id), so adding images changes no others.
    """
    if positives_per_image < 1:
        raise ValueError(f"positives_per_image must be at least 1, got {positives_per_image}")
    if not 0.0 <= cooccurring_share <= 1.0:
        raise ValueError(f"cooccurring_share must be in [0, 1], got {cooccurring_share}")
    validate_pope_template(template)
    cooccurrence = world.cooccurrence(cooccurrence_split or split)
    names = world.category_names()
    examples: list[YesNoExample] = []
    for image_id in world.image_ids(split):
        rng = np.random.default_rng([seed, image_id])
        present = list(dict.fromkeys(world.objects(split, image_id)))
        chosen = [present[i] for i in rng.permutation(len(present))[:positives_per_image]]
        used: set[str] = set()
        for name in chosen:
            examples.append(YesNoExample(image_id, existence_question(template, name), "yes", name, "present"))
            negative = pick_negative(present, used, names, cooccurrence, rng, cooccurring_share)
            if negative is None:
                continue
            used.add(negative[0])
            examples.append(YesNoExample(image_id, existence_question(template, negative[0]), "no", *negative))
    return examples
