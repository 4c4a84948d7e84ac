"""COCO-format worlds: the `World` loader and the built-in synthetic toy world."""

from .captions import word_tokens
from .categories import COCO_CATEGORIES, CocoCategory, coco_category
from .coco import UnknownNameError, World
from .examples import CaptionExample, YesNoExample, caption_examples, yes_no_examples
from .generate import generate_toy_world
from .mme import MME_SUBTASKS, build_mme_lines, write_mme_questions
from .questions import DEFAULT_MME_TEMPLATES, POPE_TEMPLATE
from .toy import POSITIONS, ToyWorldConfig

__all__ = [
    "COCO_CATEGORIES",
    "DEFAULT_MME_TEMPLATES",
    "MME_SUBTASKS",
    "POPE_TEMPLATE",
    "POSITIONS",
    "CaptionExample",
    "CocoCategory",
    "ToyWorldConfig",
    "UnknownNameError",
    "World",
    "YesNoExample",
    "build_mme_lines",
    "caption_examples",
    "coco_category",
    "generate_toy_world",
    "word_tokens",
    "write_mme_questions",
    "yes_no_examples",
]
