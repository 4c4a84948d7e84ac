"""MME-style question files (existence, count, position, color) for a split of a world.

The files follow the official MME evaluation tool: one text file per subtask, each line
`image_file <TAB> question <TAB> Yes|No`, and each image's two questions on adjacent lines,
the Yes question first. An image for which a subtask cannot ask an unambiguous pair is left out
of that subtask. Position needs two objects of different categories that appear once each.
Color needs annotations with a "color" key, which real COCO lacks, so no color file is written
for it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import write_bytes_atomic
from .captions import NUMBER_WORDS, article, plural
from .coco import World
from .examples import existence_question, pick_negative
from .questions import OPPOSITE_RELATION, RELATIONS, resolve_mme_templates

logger = logging.getLogger(__name__)

MME_SUBTASKS: tuple[str, ...] = ("existence", "count", "position", "color")


@dataclass(frozen=True)
class _ImageContext:
    """The facts about one image that a subtask builder reads."""

    annotations: list[dict[str, Any]]
    names: list[str]  # category name of each annotation, same order
    templates: Mapping[str, str]
    category_names: list[str]
    cooccurrence: Mapping[str, Mapping[str, int]]
    palette: list[str]
    cooccurring_share: float


QuestionPair = tuple[str, str]  # (question answered Yes, question answered No)


def _existence(context: _ImageContext, rng: np.random.Generator) -> QuestionPair | None:
    present = list(dict.fromkeys(context.names))
    negative = pick_negative(present, (), context.category_names, context.cooccurrence, rng, context.cooccurring_share)
    if negative is None:
        return None
    positive = present[int(rng.integers(len(present)))]
    template = context.templates["existence"]
    return existence_question(template, positive), existence_question(template, negative[0])


def _count_question(templates: Mapping[str, str], name: str, count: int) -> str:
    if count == 1:
        return templates["count_one"].format(article=article(name), object=name)
    return templates["count"].format(number=NUMBER_WORDS[count - 1], objects=plural(name))


def _count(context: _ImageContext, rng: np.random.Generator) -> QuestionPair | None:
    crowded = {name for name, annotation in zip(context.names, context.annotations) if annotation.get("iscrowd")}
    counts = Counter(context.names)
    # A wrong count one above the true count must still have a number word.
    eligible = [name for name in counts if name not in crowded and counts[name] < len(NUMBER_WORDS)]
    if not eligible:
        return None
    # Repeated categories, when the image has any, make the question a real count.
    repeated = [name for name in eligible if counts[name] > 1]
    eligible = repeated or eligible
    name = eligible[int(rng.integers(len(eligible)))]
    true_count = counts[name]
    if true_count == 1 or rng.random() < 0.5:
        wrong_count = true_count + 1
    else:
        wrong_count = true_count - 1
    return _count_question(context.templates, name, true_count), _count_question(context.templates, name, wrong_count)


def _relations(first: list[float], second: list[float]) -> list[str]:
    """Return the relations of box `first` to box `second` that are true without overlap on that axis."""
    # NOTE: on real COCO images, separated boxes of large or occluding objects may still read as
    # ambiguous to people; only the toy world's grid cells make every returned relation clear-cut.
    x1, y1, w1, h1 = first
    x2, y2, w2, h2 = second
    found = []
    if x1 + w1 <= x2:
        found.append("left")
    if x2 + w2 <= x1:
        found.append("right")
    if y1 + h1 <= y2:
        found.append("above")
    if y2 + h2 <= y1:
        found.append("below")
    return found


def _position(context: _ImageContext, rng: np.random.Generator) -> QuestionPair | None:
    counts = Counter(context.names)
    single = [(name, a["bbox"]) for name, a in zip(context.names, context.annotations) if counts[name] == 1]
    triples = [(a, b, relation) for a, box_a in single for b, box_b in single if a != b
               for relation in _relations(box_a, box_b)]
    if not triples:
        return None
    first, second, relation = triples[int(rng.integers(len(triples)))]
    template = context.templates["position"]
    yes = template.format(object=first, relation=RELATIONS[relation], other=second)
    no = template.format(object=first, relation=RELATIONS[OPPOSITE_RELATION[relation]], other=second)
    return yes, no


def _color(context: _ImageContext, rng: np.random.Generator) -> QuestionPair | None:
    colors: dict[str, set[str]] = {}
    for name, annotation in zip(context.names, context.annotations):
        colors.setdefault(name, set()).add(annotation.get("color"))
    # Ask only about categories whose every instance carries the same known colour.
    eligible = [name for name, found in colors.items() if len(found) == 1 and None not in found]
    if not eligible or len(context.palette) < 2:
        return None
    name = eligible[int(rng.integers(len(eligible)))]
    color = next(iter(colors[name]))
    others = [c for c in context.palette if c != color]
    wrong = others[int(rng.integers(len(others)))]
    template = context.templates["color"]
    return (template.format(article=article(name), object=name, color=color),
            template.format(article=article(name), object=name, color=wrong))


_BUILDERS: dict[str, Callable[[_ImageContext, np.random.Generator], QuestionPair | None]] = {
    "existence": _existence,
    "count": _count,
    "position": _position,
    "color": _color,
}


def _palette(world: World, split: str) -> list[str]:
    if world.config is not None:
        return list(world.config.colors)
    return sorted({a["color"] for a in world.coco(split).dataset["annotations"] if isinstance(a.get("color"), str)})


def build_mme_lines(
    world: World,
    split: str,
    templates: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    cooccurring_share: float = 0.8,
    cooccurrence_split: str | None = None,
) -> dict[str, list[str]]:
    """Return the lines (without newline) of every MME subtask for the split's images, in file order.

    Each image uses its own generator seeded by (seed, image id, subtask index), so the output
    depends only on the arguments and the world's files. Existence negatives are, with
    probability `cooccurring_share`, the absent category that co-occurs most with the image's
    objects in `cooccurrence_split` (the same split when None).
    """
    if not 0.0 <= cooccurring_share <= 1.0:
        raise ValueError(f"cooccurring_share must be in [0, 1], got {cooccurring_share}")
    resolved = resolve_mme_templates(templates)
    for key, template in resolved.items():
        if "\t" in template or "\n" in template or "\r" in template:
            raise ValueError(
                f"MME template {key!r} contains a tab or line break, which the file format forbids: {template!r}"
            )
    shared = {"templates": resolved, "category_names": world.category_names(),
              "cooccurrence": world.cooccurrence(cooccurrence_split or split),
              "palette": _palette(world, split), "cooccurring_share": cooccurring_share}
    lines: dict[str, list[str]] = {subtask: [] for subtask in MME_SUBTASKS}
    for image_id in world.image_ids(split):
        annotations = world.annotations(split, image_id)
        if not annotations:
            continue
        context = _ImageContext(annotations=annotations, names=world.objects(split, image_id), **shared)
        file_name = world.image_info(split, image_id)["file_name"]
        for index, subtask in enumerate(MME_SUBTASKS):
            pair = _BUILDERS[subtask](context, np.random.default_rng([seed, image_id, index]))
            if pair is not None:
                lines[subtask].append(f"{file_name}\t{pair[0]}\tYes")
                lines[subtask].append(f"{file_name}\t{pair[1]}\tNo")
    return lines


def write_mme_questions(
    world: World,
    split: str,
    root_out: str | Path,
    templates: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    cooccurring_share: float = 0.8,
    cooccurrence_split: str | None = None,
) -> dict[str, Path]:
    """Write ROOT_OUT/{subtask}.txt for every subtask that has at least one image; return their paths.

    Arguments are those of `build_mme_lines`. A subtask with no answerable image writes no file
    and is logged.
    """
    root_out = Path(root_out)
    lines = build_mme_lines(world, split, templates, seed=seed, cooccurring_share=cooccurring_share,
                            cooccurrence_split=cooccurrence_split)
    written: dict[str, Path] = {}
    for subtask, subtask_lines in lines.items():
        if not subtask_lines:
            logger.warning("no image of split %r supports MME subtask %r, so %s.txt is not written",
                           split, subtask, subtask)
            continue
        path = root_out / f"{subtask}.txt"
        write_bytes_atomic(path, ("\n".join(subtask_lines) + "\n").encode("utf-8"))
        written[subtask] = path
        logger.info("wrote %d %s questions for %d images to %s",
                    len(subtask_lines), subtask, len(subtask_lines) // 2, path)
    return written
