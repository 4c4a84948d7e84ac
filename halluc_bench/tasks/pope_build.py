"""Build POPE questions from COCO-format instance annotations.

For each sampled image the three positives are the first three distinct categories in the
image's annotation order. Each positive is followed by one negative: a category that is
annotated nowhere in the image and not yet used as a negative for that image. So every
image gives six questions, alternating yes and no, like the official question files.

Negative sampling strategies:

- ``random``: uniform over the dataset's categories that qualify.
- ``popular``: the qualifying category found in the most sampled images.
- ``adversarial``: the qualifying category that co-occurs with the positive in the most
  sampled images (the i-th negative is drawn for the i-th positive, as in the POPE
  release). Ties, and categories that never co-occur, are ordered by popularity.

Popularity ties fall back to the smaller category id, so only ``random`` and the image
sample depend on the seed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, get_args

from pycocotools.coco import COCO

from halluc_bench.tasks.io import write_jsonl_atomic

logger = logging.getLogger(__name__)

Strategy = Literal["random", "popular", "adversarial"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

POSITIVES_PER_IMAGE = 3
QUESTION_TEMPLATE = "Is there {article} {name} in the image?"


def load_coco_instances(instances: str | os.PathLike[str] | COCO) -> COCO:
    """Return a ``COCO`` index for an instances file path, or the given ``COCO`` object unchanged."""
    if isinstance(instances, COCO):
        return instances
    path = Path(instances)
    if not path.is_file():
        raise FileNotFoundError(f"COCO instances file not found: {path}")
    with path.open(encoding="utf-8-sig") as stream:
        try:
            dataset = json.load(stream)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    if not isinstance(dataset, dict):
        raise ValueError(f"{path} is a JSON {type(dataset).__name__}; expected a COCO instances object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{path} has no {key!r} list; expected a COCO instances file")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def question_text(name: str) -> str:
    """Return the POPE question for a category name, with "an" before a vowel."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return QUESTION_TEMPLATE.format(article=article, name=name)


def _image_categories(coco: COCO, image_id: Any) -> list[int]:
    """Return the distinct category ids of an image in annotation order."""
    return list(dict.fromkeys(annotation["category_id"] for annotation in coco.imgToAnns.get(image_id, [])))


def build_pope(instances: str | os.PathLike[str] | COCO, *, strategy: Strategy, n_images: int, seed: int) -> list[dict]:
    """Build POPE questions ``{question_id, image, text, label}`` for ``n_images`` sampled images.

    Only images with at least three distinct annotated categories qualify, because each
    needs three distinct positives. Images are sampled without replacement from those, in
    image-id order, with ``random.Random(seed)``. Question ids run from 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown POPE negative sampling strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    coco = load_coco_instances(instances)
    rng = random.Random(seed)

    objects = {image_id: _image_categories(coco, image_id) for image_id in sorted(coco.imgs)}
    undefined = {category for categories in objects.values() for category in categories} - set(coco.cats)
    if undefined:
        raise ValueError(f"annotations use category ids {sorted(undefined)} that are not in 'categories'; add them or remove those annotations")
    eligible = [image_id for image_id, categories in objects.items() if len(categories) >= POSITIVES_PER_IMAGE]
    if len(eligible) < n_images:
        raise ValueError(
            f"requested {n_images} images but only {len(eligible)} of {len(objects)} images have "
            f"at least {POSITIVES_PER_IMAGE} distinct annotated categories; lower n_images"
        )
    sampled = rng.sample(eligible, n_images)

    frequency = Counter(category for image_id in sampled for category in objects[image_id])
    co_occurrence: Counter[tuple[int, int]] = Counter()
    for image_id in sampled:
        for first, second in combinations(sorted(objects[image_id]), 2):
            co_occurrence[first, second] += 1
            co_occurrence[second, first] += 1
    by_popularity = sorted(coco.cats, key=lambda category: (-frequency[category], category))

    questions: list[dict] = []
    for image_id in sampled:
        present = set(objects[image_id])
        used: set[int] = set()
        image_name = coco.imgs[image_id].get("file_name", str(image_id))
        for positive in objects[image_id][:POSITIVES_PER_IMAGE]:
            candidates = [category for category in by_popularity if category not in present and category not in used]
            if not candidates:
                raise ValueError(f"image {image_id} ({image_name}): no category left for a negative question; the dataset needs more categories")
            negative = _choose_negative(strategy, positive, candidates, co_occurrence, rng)
            used.add(negative)
            for category, label in ((positive, "yes"), (negative, "no")):
                questions.append({
                    "question_id": len(questions) + 1,
                    "image": image_name,
                    "text": question_text(coco.cats[category]["name"]),
                    "label": label,
                })
    logger.info("built %d POPE %s questions for %d images", len(questions), strategy, len(sampled))
    return questions


def _choose_negative(
    strategy: Strategy,
    positive: int,
    candidates: list[int],
    co_occurrence: Counter[tuple[int, int]],
    rng: random.Random,
) -> int:
    """Pick a negative from ``candidates``, which are already ordered by popularity."""
    if strategy == "random":
        return rng.choice(sorted(candidates))
    if strategy == "popular":
        return candidates[0]
    if strategy == "adversarial":
        # max() keeps the first of equal counts, so ties keep the popularity order.
        return max(candidates, key=lambda category: co_occurrence[positive, category])
    raise ValueError(f"unknown POPE negative sampling strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def write_pope_questions(questions: list[dict], path: str | os.PathLike[str]) -> Path:
    """Write questions as official-format JSON Lines ``{question_id, image, text, label}``, atomically."""
    keys = ("question_id", "image", "text", "label")
    rows = []
    for index, question in enumerate(questions, start=1):
        missing = [key for key in keys if key not in question]
        if missing:
            raise ValueError(f"question {index} lacks {', '.join(missing)}; each question needs {', '.join(keys)}")
        rows.append({key: question[key] for key in keys})
    return write_jsonl_atomic(rows, path)
