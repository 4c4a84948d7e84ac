"""`World`: read access to any COCO-format dataset (the generated toy world or real COCO).

Layout: ROOT/annotations/instances_{split}.json (required) and captions_{split}.json (optional
until captions are requested); images in ROOT/{split}/ or ROOT/images/{split}/. Split names
are whatever the file names carry ("train", "val2014", ...).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path
from typing import Any

from PIL import Image
from pycocotools.coco import COCO

from ._io import read_json
from .captions import caption_vocabulary, word_tokens
from .questions import POPE_TEMPLATE, question_vocabulary
from .toy import POSITIONS, ToyWorldConfig

logger = logging.getLogger(__name__)

MANIFEST_NAME = "world.json"
_SPLIT_ORDER = ("train", "val", "test")


class UnknownNameError(KeyError):
    """A split or image id that the world does not contain; the message lists the valid choices."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _split_sort_key(split: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_SPLIT_ORDER):
        if split.startswith(prefix):
            return rank, split
    return len(_SPLIT_ORDER), split


def _check_coco_dict(data: Any, path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a COCO JSON object with keys {list(required)}, found a JSON {type(data).__name__}"
        )
    missing = [key for key in required if not isinstance(data.get(key), list)]
    if missing:
        raise ValueError(
            f"{path}: COCO file lacks the list(s) {missing}; expected keys {list(required)}, so fix or regenerate it"
        )
    image_ids = {image["id"] for image in data["images"]}
    for annotation in data["annotations"]:
        if annotation.get("image_id") not in image_ids:
            raise ValueError(
                f"{path}: annotation {annotation.get('id')} refers to image {annotation.get('image_id')}, "
                f"which is not in 'images'; fix or regenerate the file"
            )
    return data


def _index(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


class World:
    """A COCO-format dataset on disk; COCO objects are loaded on first use and cached."""

    def __init__(self, root: Path, instances: Mapping[str, Path], captions: Mapping[str, Path],
                 manifest: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self._instances_paths = dict(instances)
        self._captions_paths = dict(captions)
        self.manifest = manifest
        self.config = ToyWorldConfig.from_json(manifest["config"]) if manifest else None
        self._coco: dict[str, COCO] = {}
        self._captions: dict[str, COCO] = {}

    @classmethod
    def from_dir(cls, root: str | Path) -> World:
        """Open ROOT; raise FileNotFoundError naming the folder when no instances file is there."""
        root = Path(root).expanduser()
        annotations = root / "annotations"
        if not annotations.is_dir():
            raise FileNotFoundError(
                f"{annotations}: folder not found; a COCO-format world needs "
                f"{annotations}/instances_{{split}}.json (e.g. instances_val2014.json)"
            )
        instances = {path.name[len("instances_"):-len(".json")]: path for path in annotations.glob("instances_*.json")}
        if not instances:
            raise FileNotFoundError(
                f"{annotations}: no instances_{{split}}.json file found; "
                f"expected e.g. {annotations}/instances_val2014.json"
            )
        captions = {split: annotations / f"captions_{split}.json" for split in instances}
        manifest_path = root / MANIFEST_NAME
        manifest = read_json(manifest_path, "a toy-world manifest") if manifest_path.is_file() else None
        if manifest is not None and not isinstance(manifest.get("config"), dict):
            raise ValueError(f"{manifest_path}: manifest lacks its 'config' object; regenerate the world")
        return cls(root, instances, captions, manifest)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted(self._instances_paths, key=_split_sort_key))

    def _check_split(self, split: str) -> None:
        if split not in self._instances_paths:
            raise UnknownNameError(f"unknown split {split!r} in {self.root}; valid splits: {', '.join(self.splits)}")

    def instances_path(self, split: str) -> Path:
        self._check_split(split)
        return self._instances_paths[split]

    def captions_path(self, split: str) -> Path:
        self._check_split(split)
        return self._captions_paths[split]

    def coco(self, split: str) -> COCO:
        """Return the pycocotools index of the split's instance annotations."""
        if split not in self._coco:
            path = self.instances_path(split)
            data = read_json(path, "COCO instance annotations (images, annotations, categories)")
            self._coco[split] = _index(_check_coco_dict(data, path, ("images", "annotations", "categories")))
            logger.debug("loaded %s", path)
        return self._coco[split]

    def captions_coco(self, split: str) -> COCO:
        """Return the pycocotools index of the split's captions."""
        if split not in self._captions:
            path = self.captions_path(split)
            data = read_json(path, "COCO captions (images, annotations with 'caption')")
            self._captions[split] = _index(_check_coco_dict(data, path, ("images", "annotations")))
        return self._captions[split]

    def image_ids(self, split: str) -> list[int]:
        """Return the split's image ids in file order."""
        return list(self.coco(split).imgs)

    def image_info(self, split: str, image_id: int) -> dict[str, Any]:
        images = self.coco(split).imgs
        if image_id not in images:
            raise UnknownNameError(f"image id {image_id!r} is not in split {split!r} ({self.instances_path(split)})")
        return images[image_id]

    def image_id_by_file_name(self, split: str) -> dict[str, int]:
        return {info["file_name"]: image_id for image_id, info in self.coco(split).imgs.items()}

    def image_path(self, split: str, image_id: int) -> Path:
        """Return ROOT/{split}/FILE, or ROOT/images/{split}/FILE when only that one exists."""
        file_name = self.image_info(split, image_id)["file_name"]
        primary = self.root / split / file_name
        alternative = self.root / "images" / split / file_name
        if not primary.exists() and alternative.exists():
            return alternative
        return primary

    def load_image(self, split: str, image_id: int) -> Image.Image:
        path = self.image_path(split, image_id)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: image file not found; expected the image of id {image_id} of split {split!r}"
            )
        with Image.open(path) as image:
            return image.convert("RGB")

    def annotations(self, split: str, image_id: int) -> list[dict[str, Any]]:
        """Return the image's instance annotations in file order."""
        self.image_info(split, image_id)
        return list(self.coco(split).imgToAnns.get(image_id, []))

    def objects(self, split: str, image_id: int) -> list[str]:
        """Return the category names of the image's annotations, in annotation order, repeats kept."""
        categories = self.coco(split).cats
        return [categories[annotation["category_id"]]["name"] for annotation in self.annotations(split, image_id)]

    def reference_captions(self, split: str, image_id: int) -> list[str]:
        self.image_info(split, image_id)
        return [annotation["caption"] for annotation in self.captions_coco(split).imgToAnns.get(image_id, [])]

    def category_names(self) -> list[str]:
        """Return the category names ordered by category id, read from the smallest instances file."""
        loaded = [split for split in self.splits if split in self._coco]
        split = loaded[0] if loaded else min(self.splits, key=lambda s: self._instances_paths[s].stat().st_size)
        categories = self.coco(split).cats
        return [categories[category_id]["name"] for category_id in sorted(categories)]

    def category_counts(self, split: str | None = None) -> dict[str, int]:
        """Return how many images of the split (all splits for None) contain each category."""
        counts = dict.fromkeys(self.category_names(), 0)
        for chosen in self._chosen_splits(split):
            for image_id in self.image_ids(chosen):
                for name in set(self.objects(chosen, image_id)):
                    counts[name] = counts.get(name, 0) + 1
        return counts

    def cooccurrence(self, split: str | None = None) -> dict[str, dict[str, int]]:
        """Return symmetric counts of images that contain both categories (all splits for None)."""
        counts: dict[str, dict[str, int]] = {name: {} for name in self.category_names()}
        for chosen in self._chosen_splits(split):
            for image_id in self.image_ids(chosen):
                for first, second in combinations(sorted(set(self.objects(chosen, image_id))), 2):
                    value = counts.setdefault(first, {}).get(second, 0) + 1
                    counts[first][second] = value
                    counts.setdefault(second, {})[first] = value
        return counts

    def _chosen_splits(self, split: str | None) -> tuple[str, ...]:
        if split is None:
            return self.splits
        self._check_split(split)
        return (split,)

    def vocabulary(
        self, mme_templates: Mapping[str, str] | None = None, pope_template: str = POPE_TEMPLATE
    ) -> list[str]:
        """Return the sorted lower-case word tokens that captions, questions and answers can contain.

        A toy world's vocabulary follows from its config and is closed. For other datasets it is
        every token of the caption files plus the question words.
        """
        if self.config is not None:
            words = caption_vocabulary(self.config.categories, self.config.colors, POSITIONS)
            colors: tuple[str, ...] = self.config.colors
        else:
            words = set()
            for split in self.splits:
                if self.captions_path(split).is_file():
                    for annotation in self.captions_coco(split).dataset["annotations"]:
                        words.update(word_tokens(annotation["caption"]))
            found_colors: set[str] = set()
            for split in self.splits:
                found_colors.update(a["color"] for a in self.coco(split).dataset["annotations"] if "color" in a)
            colors = tuple(sorted(found_colors))
        words |= question_vocabulary(self.category_names(), colors, mme_templates, pope_template)
        return sorted(words)
