"""Training examples of the organism, built from one split of a COCO-format world.

Caption examples pair "Describe the image." with every reference caption of an image. Yes/no
examples ask the POPE question "Is there a {object} in the image?" about each distinct
category of an image (answer "Yes") and about as many categories the image lacks (answer
"No"). Negatives are drawn uniformly by default, as in ordinary instruction data, so the
model is never taught to reject an image's co-occurring partner specifically.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from halluc_bench.models.training_data import TrainingData, TrainingExample
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.unlearning.data import CAPTION_QUESTION
from halluc_bench.world.captions import article
from halluc_bench.world.coco import World
from halluc_bench.world.questions import POPE_TEMPLATE

logger = logging.getLogger(__name__)

NegativeSampling = Literal["uniform", "partner"]
LabelSource = Literal["annotations", "captions"]


@dataclass(frozen=True)
class ExampleConfig:
    """How caption and yes/no examples are written.

    ``negative_sampling``: "uniform" draws the absent categories of "No" questions uniformly.
    "partner" first takes the absent co-occurrence partner of each present object (as
    adversarial POPE does) and fills up uniformly. ``label_source``: "annotations" answers
    "Yes" exactly for annotated categories; "captions" also answers "Yes" for absent objects
    that a training caption of the image names, as instruction data written from captions
    would.
    """

    caption_question: str = CAPTION_QUESTION
    yes_no_template: str = POPE_TEMPLATE
    yes_answer: str = "Yes"
    no_answer: str = "No"
    negative_sampling: NegativeSampling = "uniform"
    label_source: LabelSource = "annotations"
    # Train only on reference captions that start with one of these prefixes; () keeps all.
    caption_prefixes: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "caption_prefixes", tuple(self.caption_prefixes))
        if "{object}" not in self.yes_no_template:
            raise ValueError(f"ExampleConfig.yes_no_template {self.yes_no_template!r} lacks the {{object}} placeholder")
        if self.negative_sampling not in ("uniform", "partner"):
            raise ValueError(f"unknown ExampleConfig.negative_sampling {self.negative_sampling!r}; valid: uniform, partner")
        if self.label_source not in ("annotations", "captions"):
            raise ValueError(f"unknown ExampleConfig.label_source {self.label_source!r}; valid: annotations, captions")
        for name in ("caption_question", "yes_answer", "no_answer"):
            if not getattr(self, name).strip():
                raise ValueError(f"ExampleConfig.{name} must not be empty")

    def question(self, name: str) -> str:
        """Return the yes/no question about category ``name``."""
        return self.yes_no_template.format(article=article(name), object=name)

    def to_dict(self) -> dict:
        return asdict(self)


def organism_vocabulary(world: World, config: ExampleConfig) -> tuple[str, ...]:
    """Return the world's words plus the words of the prompts and answers, case kept."""
    extra = (config.caption_question, config.yes_no_template.replace("{article}", "a an").replace("{object}", " "),
             config.yes_answer, config.no_answer)
    return (*world.vocabulary(), *extra)


def load_pixels(vlm: VisionLanguageModel, world: World, split: str, image_ids: list[int], progress: bool = False):
    """Return the preprocessed pixels of ``image_ids``, one row per id, in that order."""
    images = [world.load_image(split, image_id) for image_id in tqdm(image_ids, desc=f"loading {split} images", disable=None if progress else True, leave=False)]
    return vlm.pixel_values(images)


def _caption_mentions(world: World, split: str) -> dict[int, set[str]]:
    """Return, per image, the absent categories its captions name (the "hallucinated" field of toy-world captions)."""
    named: dict[int, set[str]] = {}
    for annotation in world.captions_coco(split).dataset["annotations"]:
        for name in annotation.get("hallucinated", ()):
            named.setdefault(annotation["image_id"], set()).add(name)
    return named


def yes_no_examples(world: World, split: str, image_ids: list[int], config: ExampleConfig) -> list[TrainingExample]:
    """Write the yes/no examples of ``image_ids``: one "Yes" per present category, as many "No"."""
    rng = np.random.default_rng([config.seed, 7])
    categories = world.category_names()
    partners = world.config.partner_of() if world.config is not None else {}
    hallucinated = _caption_mentions(world, split) if config.label_source == "captions" else {}
    examples: list[TrainingExample] = []
    for row, image_id in enumerate(image_ids):
        present = list(dict.fromkeys(world.objects(split, image_id)))
        positives = present + sorted(hallucinated.get(image_id, set()) - set(present))
        absent = [name for name in categories if name not in present and name not in positives]
        preferred = [partners[name] for name in present if partners.get(name) in absent]
        negatives = preferred if config.negative_sampling == "partner" else []
        others = [name for name in absent if name not in negatives]
        needed = min(len(positives), len(absent)) - len(negatives)
        if needed > 0:
            negatives = negatives + [others[i] for i in rng.choice(len(others), size=needed, replace=False)]
        for name in positives:
            examples.append(TrainingExample(row, config.question(name), config.yes_answer, "yes_no"))
        for name in negatives[: len(positives)]:
            examples.append(TrainingExample(row, config.question(name), config.no_answer, "yes_no"))
    return examples


def build_training_data(
    vlm: VisionLanguageModel, world: World, config: ExampleConfig, split: str = "train", progress: bool = False
) -> TrainingData:
    """Return the preprocessed pixels, caption examples and yes/no examples of one world split."""
    image_ids = world.image_ids(split)
    pixels = load_pixels(vlm, world, split, image_ids, progress)
    captions = [
        TrainingExample(row, config.caption_question, caption, "caption")
        for row, image_id in enumerate(image_ids)
        for caption in world.reference_captions(split, image_id)
        if not config.caption_prefixes or caption.startswith(config.caption_prefixes)
    ]
    yes_no = yes_no_examples(world, split, image_ids, config)
    logger.info("training data: %d images, %d captions, %d yes/no questions", len(image_ids), len(captions), len(yes_no))
    return TrainingData(pixel_values=pixels, captions=captions, yes_no=yes_no)
