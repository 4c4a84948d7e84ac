"""Tests of the toy-world generator and the COCO-format `World` loader."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from halluc_bench.world import (
    POSITIONS,
    ToyWorldConfig,
    UnknownNameError,
    World,
    caption_examples,
    generate_toy_world,
    word_tokens,
    yes_no_examples,
)
from halluc_bench.world.captions import article, plural
from halluc_bench.world.glyphs import glyph
from halluc_bench.world.toy import DEFAULT_CATEGORIES

# Official COCO 2014/2017 ids and supercategories of the default categories, written out here
# independently of the package's table.
OFFICIAL_COCO = {
    "person": (1, "person"), "car": (3, "vehicle"), "cat": (17, "animal"), "dog": (18, "animal"),
    "frisbee": (34, "sports"), "sports ball": (37, "sports"), "tennis racket": (43, "sports"),
    "bottle": (44, "kitchen"), "cup": (47, "kitchen"), "fork": (48, "kitchen"), "knife": (49, "kitchen"),
    "bowl": (51, "kitchen"), "chair": (62, "furniture"), "dining table": (67, "furniture"),
    "mouse": (74, "electronic"), "keyboard": (76, "electronic"),
}
SPLITS = ("train", "val", "test")


def tiny_config(**changes) -> ToyWorldConfig:
    # The hallucination rate stays below the share of captions that can hallucinate in tiny worlds.
    values = {"seed": 3, "n_train": 60, "n_val": 20, "n_test": 20, "caption_hallucination_rate": 0.05}
    values.update(changes)
    return ToyWorldConfig(**values)


def small_config(**changes) -> ToyWorldConfig:
    """A 20-image world, too small to host hallucinated captions."""
    return tiny_config(**{"n_train": 10, "n_val": 5, "n_test": 5, "caption_hallucination_rate": 0.0, **changes})


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> World:
    return generate_toy_world(tiny_config(), tmp_path_factory.mktemp("tiny") / "world")


@pytest.fixture(scope="module")
def medium_world(tmp_path_factory) -> World:
    """Enough training images to measure the configured rates."""
    config = tiny_config(n_train=1500, n_val=40, n_test=40, caption_hallucination_rate=0.12)
    return generate_toy_world(config, tmp_path_factory.mktemp("medium") / "world")


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def mentioned_categories(caption: str, names: list[str]) -> list[str]:
    """Return the category names a caption mentions, singular or plural, longest names first."""
    found = []
    text = " " + " ".join(word_tokens(caption)) + " "
    for name in sorted(names, key=len, reverse=True):
        for form in (name, plural(name)):
            if f" {form} " in text:
                found.append(name)
                text = text.replace(f" {form} ", " ")
    return found


def pair_rate(world: World, split: str, pairs) -> float:
    both = either = 0
    for image_id in world.image_ids(split):
        present = set(world.objects(split, image_id))
        for first, second in pairs:
            if first in present or second in present:
                either += 1
                both += first in present and second in present
    return both / either


# COCO validity


def test_files_load_with_pycocotools(tiny_world):
    for split in SPLITS:
        instances = COCO(str(tiny_world.instances_path(split)))
        captions = COCO(str(tiny_world.captions_path(split)))
        assert len(instances.getImgIds()) == {"train": 60, "val": 20, "test": 20}[split]
        assert len(instances.getAnnIds()) > 0
        assert len(captions.getAnnIds()) > 0


def test_ids_unique_across_splits(tiny_world):
    image_ids, annotation_ids, caption_ids = [], [], []
    for split in SPLITS:
        image_ids += [image["id"] for image in load(tiny_world.instances_path(split))["images"]]
        annotation_ids += [a["id"] for a in load(tiny_world.instances_path(split))["annotations"]]
        caption_ids += [a["id"] for a in load(tiny_world.captions_path(split))["annotations"]]
    assert len(set(image_ids)) == len(image_ids)
    assert len(set(annotation_ids)) == len(annotation_ids)
    assert len(set(caption_ids)) == len(caption_ids)


def test_annotations_bbox_inside_image(tiny_world):
    for split in SPLITS:
        data = load(tiny_world.instances_path(split))
        sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
        for annotation in data["annotations"]:
            x, y, w, h = annotation["bbox"]
            width, height = sizes[annotation["image_id"]]
            assert x >= 0
            assert y >= 0
            assert w > 0
            assert h > 0
            assert x + w <= width
            assert y + h <= height
            assert annotation["area"] == w * h
            assert annotation["iscrowd"] == 0
            assert annotation["segmentation"] == [[x, y, x + w, y, x + w, y + h, x, y + h]]
            assert annotation["position"] in POSITIONS
            assert annotation["color"] in tiny_world.config.colors


def test_annotations_position_matches_bbox(tiny_world):
    half = tiny_world.config.image_size / 2
    for annotation in load(tiny_world.instances_path("train"))["annotations"]:
        x, y, w, h = annotation["bbox"]
        row = "top" if y + h <= half else "bottom"
        column = "left" if x + w <= half else "right"
        assert annotation["position"] == f"{row} {column}"


def test_categories_are_official_coco(tiny_world):
    categories = load(tiny_world.instances_path("train"))["categories"]
    assert {c["name"] for c in categories} == set(OFFICIAL_COCO)
    for category in categories:
        assert (category["id"], category["supercategory"]) == OFFICIAL_COCO[category["name"]]


def test_captions_reference_existing_images(tiny_world):
    for split in SPLITS:
        image_ids = {image["id"] for image in load(tiny_world.instances_path(split))["images"]}
        captions = load(tiny_world.captions_path(split))
        assert {image["id"] for image in captions["images"]} == image_ids
        per_image = Counter(a["image_id"] for a in captions["annotations"])
        assert set(per_image) == image_ids
        assert min(per_image.values()) >= 3
        assert max(per_image.values()) <= 5


def test_images_exist_with_declared_size(tiny_world):
    for split in SPLITS:
        for image_id in tiny_world.image_ids(split)[:5]:
            image = tiny_world.load_image(split, image_id)
            info = tiny_world.image_info(split, image_id)
            assert image.mode == "RGB"
            assert image.size == (info["width"], info["height"])
            assert tiny_world.image_path(split, image_id) == tiny_world.root / split / info["file_name"]


def test_image_shows_glyph_colour_in_bbox(tiny_world):
    from halluc_bench.world.toy import PALETTE

    image_id = tiny_world.image_ids("val")[0]
    pixels = np.asarray(tiny_world.load_image("val", image_id))
    for annotation in tiny_world.annotations("val", image_id):
        x, y, w, h = (int(v) for v in annotation["bbox"])
        region = pixels[y : y + h, x : x + w].reshape(-1, 3)
        assert (region == PALETTE[annotation["color"]]).all(axis=1).sum() >= 10


# Determinism and caching


def test_generator_same_seed_same_bytes(tmp_path):
    first = generate_toy_world(tiny_config(), tmp_path / "a")
    second = generate_toy_world(tiny_config(), tmp_path / "b")
    files_a = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second.root) for p in second.root.rglob("*") if p.is_file())
    assert files_a == files_b
    for relative in files_a:
        assert (first.root / relative).read_bytes() == (second.root / relative).read_bytes(), relative
    assert first.manifest["content_hash"] == second.manifest["content_hash"]


def test_generator_other_seed_differs(tmp_path):
    first = generate_toy_world(tiny_config(), tmp_path / "a")
    second = generate_toy_world(tiny_config(seed=4), tmp_path / "b")
    assert first.manifest["content_hash"] != second.manifest["content_hash"]
    assert first.instances_path("train").read_bytes() != second.instances_path("train").read_bytes()


def test_generator_reuses_matching_root(tmp_path):
    config = small_config()
    generate_toy_world(config, tmp_path / "w")
    marker = (tmp_path / "w" / "annotations" / "instances_train.json").stat().st_mtime_ns
    again = generate_toy_world(config, tmp_path / "w")
    assert again.instances_path("train").stat().st_mtime_ns == marker
    assert again.config == config


def test_generator_rejects_other_config(tmp_path):
    generate_toy_world(small_config(), tmp_path / "w")
    with pytest.raises(FileExistsError, match=r"overwrite=True") as error:
        generate_toy_world(small_config(seed=9), tmp_path / "w")
    assert str(tmp_path / "w") in str(error.value)
    assert "seed" in str(error.value)


def test_generator_overwrite_regenerates(tmp_path):
    generate_toy_world(small_config(), tmp_path / "w")
    world = generate_toy_world(small_config(seed=9), tmp_path / "w", overwrite=True)
    assert world.config.seed == 9
    assert World.from_dir(tmp_path / "w").config.seed == 9
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_generator_rejects_partial_root(tmp_path):
    world = generate_toy_world(small_config(), tmp_path / "w")
    world.image_path("train", world.image_ids("train")[0]).unlink()
    with pytest.raises(FileExistsError, match=r"changed or are incomplete"):
        generate_toy_world(world.config, tmp_path / "w")
    (tmp_path / "w" / "world.json").unlink()
    with pytest.raises(FileExistsError, match=r"no world.json"):
        generate_toy_world(world.config, tmp_path / "w")
    repaired = generate_toy_world(world.config, tmp_path / "w", overwrite=True)
    assert repaired.image_path("train", repaired.image_ids("train")[0]).is_file()


def test_generator_overwrite_keeps_foreign_folder(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes.txt"):
        generate_toy_world(small_config(), tmp_path / "w", overwrite=True)
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"


def test_generator_fills_empty_root(tmp_path):
    (tmp_path / "w").mkdir()
    world = generate_toy_world(small_config(), tmp_path / "w")
    assert world.splits == SPLITS


# Calibration knobs


def test_cooccurrence_rate_matches_config(medium_world):
    measured = pair_rate(medium_world, "train", medium_world.config.pairs)
    assert abs(measured - medium_world.config.cooccurrence_rate) < 0.04


def test_cooccurrence_rate_follows_knob(tmp_path):
    config = tiny_config(n_train=1000, n_val=5, n_test=5, cooccurrence_rate=0.3, caption_hallucination_rate=0.0)
    world = generate_toy_world(config, tmp_path / "w")
    assert abs(pair_rate(world, "train", config.pairs) - 0.3) < 0.05


def test_caption_hallucination_rate_matches_config(medium_world):
    names = medium_world.category_names()
    captions = load(medium_world.captions_path("train"))["annotations"]
    hallucinated = 0
    for caption in captions:
        present = set(medium_world.objects("train", caption["image_id"]))
        absent_mentions = [n for n in mentioned_categories(caption["caption"], names) if n not in present]
        hallucinated += bool(absent_mentions)
        assert sorted(absent_mentions) == sorted(caption["hallucinated"])
    assert abs(hallucinated / len(captions) - 0.12) < 0.005


def test_hallucinated_mentions_are_absent_partners(medium_world):
    partners = medium_world.config.partner_of()
    for example in caption_examples(medium_world, "train"):
        present = set(medium_world.objects("train", example.image_id))
        for name in example.hallucinated:
            assert name not in present
            assert partners[name] in present


def test_eval_captions_faithful_and_complete(medium_world):
    names = medium_world.category_names()
    for split in ("val", "test"):
        for annotation in load(medium_world.captions_path(split))["annotations"]:
            present = set(medium_world.objects(split, annotation["image_id"]))
            mentioned = set(mentioned_categories(annotation["caption"], names))
            assert mentioned == present, annotation["caption"]
            assert annotation["hallucinated"] == []


def test_cooccurrence_counts_symmetric(medium_world):
    counts = medium_world.cooccurrence("train")
    fork_knife = sum(
        1 for image_id in medium_world.image_ids("train")
        if {"fork", "knife"} <= set(medium_world.objects("train", image_id))
    )
    assert counts["fork"]["knife"] == fork_knife
    assert counts["knife"]["fork"] == fork_knife
    assert counts["fork"]["knife"] > 2 * max(v for k, v in counts["fork"].items() if k != "knife")


def test_hallucination_rate_too_high_rejected(tmp_path):
    config = tiny_config(n_train=30, n_val=5, n_test=5, caption_hallucination_rate=0.95)
    with pytest.raises(ValueError, match=r"caption_hallucination_rate"):
        generate_toy_world(config, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    assert list(tmp_path.iterdir()) == []


# Text


def test_vocabulary_covers_captions(tiny_world):
    vocabulary = set(tiny_world.vocabulary())
    for split in SPLITS:
        for annotation in load(tiny_world.captions_path(split))["annotations"]:
            assert set(word_tokens(annotation["caption"])) <= vocabulary, annotation["caption"]
    assert len(vocabulary) < 120


def test_caption_phrasings_vary(tiny_world):
    openings = Counter()
    for image_id in tiny_world.image_ids("val"):
        for caption in tiny_world.reference_captions("val", image_id):
            openings[" ".join(word_tokens(caption)[:2])] += 1
    assert len(openings) >= 4


def test_article_before_vowel():
    assert article("umbrella") == "an"
    assert article("apple") == "an"
    assert article("fork") == "a"


def test_plural_irregular_names():
    assert plural("knife") == "knives"
    assert plural("person") == "people"
    assert plural("mouse") == "mice"
    assert plural("bus") == "buses"
    assert plural("sports ball") == "sports balls"


# Training examples


def test_yes_no_examples_balanced(tiny_world):
    examples = yes_no_examples(tiny_world, "train", seed=1)
    answers = Counter(example.answer for example in examples)
    assert answers["yes"] == answers["no"]
    for example in examples:
        present = set(tiny_world.objects("train", example.image_id))
        assert (example.object in present) == (example.answer == "yes")
        assert example.question == f"Is there {article(example.object)} {example.object} in the image?"


def test_yes_no_negatives_favour_partners(medium_world):
    partners = medium_world.config.partner_of()
    examples = yes_no_examples(medium_world, "train", seed=1, cooccurring_share=1.0, positives_per_image=1)
    hits = total = 0
    for example in examples:
        if example.answer != "no":
            continue
        present = set(medium_world.objects("train", example.image_id))
        absent_partners = {partners[n] for n in present if n in partners} - present
        if absent_partners:
            total += 1
            hits += example.object in absent_partners
    assert total > 100
    assert hits / total > 0.9


def test_yes_no_article_an(tmp_path):
    config = tiny_config(n_train=30, n_val=5, n_test=5, categories=("umbrella", "person", "car"),
                         pairs=(("umbrella", "person"),))
    world = generate_toy_world(config, tmp_path / "w")
    questions = {e.question for e in yes_no_examples(world, "train")}
    assert "Is there an umbrella in the image?" in questions


def test_yes_no_deterministic(tiny_world):
    assert yes_no_examples(tiny_world, seed=5) == yes_no_examples(tiny_world, seed=5)
    assert yes_no_examples(tiny_world, seed=5) != yes_no_examples(tiny_world, seed=6)


# Config validation


def test_config_rejects_unknown_category():
    with pytest.raises(ValueError, match=r"did you mean 'knife'"):
        ToyWorldConfig(categories=("fork", "knive"), pairs=())


def test_config_rejects_shared_partner():
    with pytest.raises(ValueError, match=r"disjoint"):
        ToyWorldConfig(pairs=(("fork", "knife"), ("fork", "cup")))


def test_config_rejects_bad_rate():
    with pytest.raises(ValueError, match=r"cooccurrence_rate"):
        ToyWorldConfig(cooccurrence_rate=1.5)


def test_config_rejects_unknown_colour():
    with pytest.raises(ValueError, match=r"orange"):
        ToyWorldConfig(colors=("red", "orange"))


def test_config_json_round_trip():
    config = tiny_config(category_weights=tuple(float(i + 1) for i in range(len(DEFAULT_CATEGORIES))))
    assert ToyWorldConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_glyphs_distinct():
    bitmaps = {name: glyph(name) for name in DEFAULT_CATEGORIES}
    names = sorted(bitmaps)
    for i, first in enumerate(names):
        assert bitmaps[first].sum() >= 20, first
        for second in names[i + 1 :]:
            assert (bitmaps[first] != bitmaps[second]).sum() >= 30, (first, second)


# Loading other COCO-format folders


@pytest.fixture()
def sample_coco_dir(tmp_path, realfile) -> Path:
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    shutil.copy(realfile("mmdetection/tests/data/coco_sample.json"), annotations / "instances_val2017.json")
    return tmp_path / "coco"


def test_from_dir_real_sample(sample_coco_dir):
    world = World.from_dir(sample_coco_dir)
    assert world.splits == ("val2017",)
    assert world.config is None
    assert world.category_names() == ["bus", "car"]
    assert world.image_ids("val2017") == [0, 1, 2]
    assert world.objects("val2017", 0) == ["bus", "car"]
    assert world.objects("val2017", 2) == []
    assert world.cooccurrence() == {"bus": {"car": 1}, "car": {"bus": 1}}
    assert world.image_path("val2017", 0) == sample_coco_dir / "val2017" / "fake1.jpg"


def test_from_dir_missing_captions_named(sample_coco_dir):
    world = World.from_dir(sample_coco_dir)
    with pytest.raises(FileNotFoundError, match=r"captions_val2017\.json"):
        world.reference_captions("val2017", 0)
    with pytest.raises(FileNotFoundError, match=r"fake1\.jpg"):
        world.load_image("val2017", 0)


def test_from_dir_images_subfolder(sample_coco_dir):
    (sample_coco_dir / "images" / "val2017").mkdir(parents=True)
    (sample_coco_dir / "images" / "val2017" / "fake1.jpg").write_bytes(b"")
    world = World.from_dir(sample_coco_dir)
    assert world.image_path("val2017", 0) == sample_coco_dir / "images" / "val2017" / "fake1.jpg"


def test_from_dir_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "annotations"))):
        World.from_dir(tmp_path / "nowhere")
    (tmp_path / "empty" / "annotations").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"instances_\{split\}\.json"):
        World.from_dir(tmp_path / "empty")


def test_from_dir_corrupt_json_named(tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "instances_val.json").write_text('{"images": [\n{"id": 1,\n')
    world = World.from_dir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{annotations / 'instances_val.json'}:3:")):
        world.coco("val")


def test_from_dir_json_list_rejected(tmp_path, realfile):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    shutil.copy(realfile("HALC/transformers-4.36.2/tests/fixtures/tests_samples/COCO/coco_annotations.txt"),
                annotations / "instances_val.json")
    with pytest.raises(ValueError, match=r"instances_val\.json: expected a COCO JSON object"):
        World.from_dir(tmp_path).coco("val")


def test_from_dir_unknown_split(tiny_world):
    with pytest.raises(UnknownNameError, match=r"valid splits: train, val, test"):
        tiny_world.coco("val2014")
    with pytest.raises(UnknownNameError, match=r"image id 999999"):
        tiny_world.objects("val", 999999)
