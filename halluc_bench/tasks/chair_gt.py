"""Ground-truth objects for CHAIR from COCO-format annotation files.

The ground truth of an image is the canonical name of every instance category annotated in
it plus every object mentioned in its reference captions (parsed with the same rules as the
captions being scored). Every image that a file lists has ground truth, possibly empty.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from pycocotools.coco import COCO
from tqdm import tqdm

if TYPE_CHECKING:
    from halluc_bench.tasks.chair import CaptionObjects, Synonyms

logger = logging.getLogger(__name__)


def objects_from_coco(
    instances_paths: Sequence[Path],
    captions_paths: Sequence[Path],
    parse_caption: Callable[[str], CaptionObjects],
    synonyms: Synonyms,
) -> dict[int, frozenset[str]]:
    """Return ``{image_id: canonical objects}`` from COCO instance and caption annotation files."""
    if not instances_paths and not captions_paths:
        raise ValueError("no COCO annotation files given; pass instance and caption files")
    objects: dict[int, set[str]] = {}
    for path in instances_paths:
        coco = load_coco(path)
        for image_id in coco.getImgIds():
            objects.setdefault(image_id, set())
        for annotation in coco.dataset.get("annotations", []):
            name = _category_name(coco, annotation, path)
            if name not in synonyms:
                raise ValueError(
                    f"{path}: category {name!r} is not in the synonym list {synonyms.source}; "
                    f"use a synonym list that names every category"
                )
            objects.setdefault(annotation["image_id"], set()).add(synonyms.to_canonical[name])
    for path in captions_paths:
        coco = load_coco(path)
        for image_id in coco.getImgIds():
            objects.setdefault(image_id, set())
        annotations = coco.dataset.get("annotations", [])
        # A bar only for many captions, and only on a terminal (disable=None).
        bar_off = True if len(annotations) < 1000 else None
        for annotation in tqdm(annotations, desc=f"parse {path.name}", unit="caption", disable=bar_off, leave=False):
            caption = annotation.get("caption")
            if not isinstance(caption, str):
                raise ValueError(f"{path}: caption annotation {annotation.get('id')!r} has no 'caption' text")
            objects.setdefault(annotation["image_id"], set()).update(parse_caption(caption).objects)
    logger.info("built ground-truth objects of %d images from %d instance and %d caption files",
                len(objects), len(instances_paths), len(captions_paths))
    return {image_id: frozenset(names) for image_id, names in objects.items()}


def load_coco(path: Path) -> COCO:
    """Load a COCO annotation file with pycocotools, keeping its progress prints off stdout."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        dataset = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    if not isinstance(dataset, dict) or not isinstance(dataset.get("annotations", []), list):
        raise ValueError(f"{path}: not a COCO annotation file (expected an object with an 'annotations' list)")
    for number, annotation in enumerate(dataset.get("annotations", []), start=1):
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise ValueError(f"{path}: annotation {number} has no 'image_id'")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


def _category_name(coco: COCO, annotation: dict, path: Path) -> str:
    category_id = annotation.get("category_id")
    if category_id not in coco.cats:
        raise ValueError(f"{path}: annotation {annotation.get('id')!r} has category id {category_id!r}, "
                         f"which the file's categories do not define")
    return coco.cats[category_id]["name"]
