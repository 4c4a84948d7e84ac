"""Hugging Face `datasets` interop: world export round trips, and local lmms-lab POPE and MME copies."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from halluc_bench.tasks.definitions import load_task_definition
from halluc_bench.tasks.hf_loaders import (
    attach_mme_answers,
    load_mme_parquet,
    load_pope_parquet,
    parquet_files,
    score_pope_answers,
)
from halluc_bench.tasks.mme import load_mme_key_dir, load_mme_llava_answers, load_mme_results_dir, score_mme
from halluc_bench.tasks.mme_eval import build_mme_set
from halluc_bench.tasks.pope import build_pope, score_pope_files, write_pope_questions
from halluc_bench.world import ToyWorldConfig, World, build_mme_lines, generate_toy_world
from halluc_bench.world.generate import content_hash
from halluc_bench.world.hf_export import (
    METADATA_NAME,
    dataset_dict_to_world,
    read_world_dataset,
    world_from_dataset,
    world_to_dataset_dict,
    write_world_dataset,
)

FORMATS = ("disk", "parquet")
STRATEGIES = ("random", "popular", "adversarial")
POPE_FEATURES = Features({
    "id": Value("string"), "question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
    "image_source": Value("string"), "image": ImageFeature(), "category": Value("string"),
})
MME_FEATURES = Features({
    "question_id": Value("string"), "image": ImageFeature(), "question": Value("string"),
    "answer": Value("string"), "category": Value("string"),
})


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    config = ToyWorldConfig(seed=4, n_train=8, n_val=3, n_test=30, caption_hallucination_rate=0.0)
    return generate_toy_world(config, tmp_path_factory.mktemp("hf") / "world")


@pytest.fixture(scope="module")
def exports(world, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {layout: write_world_dataset(world, root / layout, format=layout) for layout in FORMATS}


@pytest.fixture(scope="module")
def rebuilt(exports, tmp_path_factory) -> dict[str, World]:
    root = tmp_path_factory.mktemp("rebuilt")
    return {layout: world_from_dataset(folder, root / layout, cache_dir=root / "cache") for layout, folder in exports.items()}


# ----------------------------------------------------------------------------- world export
def test_export_columns_match_world(world):
    dataset = world_to_dataset_dict(world)["test"]
    assert list(dataset.column_names[:8]) == ["image_id", "file_name", "image", "width", "height", "objects", "bboxes", "captions"]
    for row in dataset.select_columns(["image_id", "objects", "bboxes", "captions", "width"]):
        image_id = row["image_id"]
        assert row["objects"] == world.objects("test", image_id)
        assert row["bboxes"] == [annotation["bbox"] for annotation in world.annotations("test", image_id)]
        assert row["captions"] == world.reference_captions("test", image_id)
        assert row["width"] == world.image_info("test", image_id)["width"]


def test_export_image_bytes_original(world):
    dataset = world_to_dataset_dict(world, ["val"])["val"].cast_column("image", ImageFeature(decode=False))
    for row in dataset:
        assert row["image"]["bytes"] == world.image_path("val", row["image_id"]).read_bytes()


def test_export_image_decodes(world):
    row = world_to_dataset_dict(world, ["val"])["val"][0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (row["width"], row["height"])


@pytest.mark.parametrize("layout", FORMATS)
def test_export_folder_layout(exports, world, layout):
    folder = exports[layout]
    assert (folder / METADATA_NAME).is_file()
    if layout == "parquet":
        assert sorted(path.name for path in folder.glob("*.parquet")) == sorted(f"{split}.parquet" for split in world.splits)
    else:
        assert (folder / "dataset_dict.json").is_file()


@pytest.mark.parametrize("layout", FORMATS)
def test_export_reads_back_equal(exports, world, layout, tmp_path):
    loaded, metadata = read_world_dataset(exports[layout], cache_dir=tmp_path)
    original = world_to_dataset_dict(world)
    assert list(loaded) == list(original)
    assert metadata["manifest"] == world.manifest
    for split in original:
        assert loaded[split].features == original[split].features
        left = loaded[split].cast_column("image", ImageFeature(decode=False)).to_dict()
        right = original[split].cast_column("image", ImageFeature(decode=False)).to_dict()
        assert left == right


@pytest.mark.parametrize("layout", FORMATS)
def test_rebuilt_world_same_files(rebuilt, world, layout):
    # Same images and the same COCO JSON bytes, so the toy world's own content hash still matches.
    assert content_hash(rebuilt[layout].root) == (world.manifest["content_hash"], world.manifest["file_count"])


@pytest.mark.parametrize("layout", FORMATS)
def test_rebuilt_world_same_annotations(rebuilt, world, layout):
    again = rebuilt[layout]
    assert again.splits == world.splits
    assert again.config == world.config
    assert again.category_names() == world.category_names()
    for split in world.splits:
        assert again.image_ids(split) == world.image_ids(split)
        for image_id in world.image_ids(split):
            assert again.annotations(split, image_id) == world.annotations(split, image_id)
            assert again.reference_captions(split, image_id) == world.reference_captions(split, image_id)
            assert again.image_path(split, image_id).read_bytes() == world.image_path(split, image_id).read_bytes()


@pytest.mark.parametrize("layout", FORMATS)
def test_rebuilt_world_same_questions(rebuilt, world, layout):
    again = rebuilt[layout]
    assert build_mme_lines(again, "test", seed=3) == build_mme_lines(world, "test", seed=3)
    definition = load_task_definition("mme")
    assert build_mme_set(again, "test", definition, seed=0).lines == build_mme_set(world, "test", definition, seed=0).lines
    for strategy in STRATEGIES:
        expected = build_pope(world.coco("test"), strategy=strategy, n_images=3, seed=1)
        assert build_pope(again.coco("test"), strategy=strategy, n_images=3, seed=1) == expected


def coco_world(root: Path) -> World:
    """A two-image COCO-format world without manifest or captions, with one category never annotated."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images = []
    for image_id, colour in ((42, (200, 10, 10)), (7, (10, 10, 200))):
        file_name = f"COCO_val2014_{image_id:012d}.png"
        (root / "val2014" / file_name).write_bytes(png_bytes(colour))
        images.append({"id": image_id, "file_name": file_name, "width": 4, "height": 4})
    annotations = [
        {"id": 5, "image_id": 42, "category_id": 18, "bbox": [0, 0, 2, 2], "area": 4.0, "iscrowd": 0,
         "segmentation": {"counts": "abc", "size": [4, 4]}},
        {"id": 6, "image_id": 42, "category_id": 1, "bbox": [1.5, 1, 2, 3], "area": 6.0, "iscrowd": 1},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"},
                  {"id": 90, "name": "toothbrush", "supercategory": "indoor"}]
    data = {"info": {"year": 2014}, "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    return World.from_dir(root)


@pytest.mark.parametrize("layout", FORMATS)
def test_coco_world_round_trip(tmp_path, layout):
    world = coco_world(tmp_path / "coco")
    again = world_from_dataset(write_world_dataset(world, tmp_path / "export", format=layout), tmp_path / "again",
                               cache_dir=tmp_path / "cache")
    assert again.manifest is None
    assert not again.captions_path("val2014").exists()
    assert again.coco("val2014").dataset == world.coco("val2014").dataset
    assert again.category_names() == ["person", "dog", "toothbrush"]
    assert again.load_image("val2014", 42).getpixel((0, 0)) == (200, 10, 10)


def test_rebuild_without_metadata(world, tmp_path, caplog):
    dataset_dict = world_to_dataset_dict(world, ["test"])
    with caplog.at_level(logging.WARNING, logger="halluc_bench.world.hf_export"):
        again = dataset_dict_to_world(dataset_dict, tmp_path / "bare")
    assert "no export metadata" in caplog.text
    assert again.manifest is None
    assert set(again.category_names()) <= set(world.category_names())
    for image_id in world.image_ids("test"):
        assert again.annotations("test", image_id) == world.annotations("test", image_id)


def test_rebuild_missing_column(world, tmp_path):
    dataset_dict = world_to_dataset_dict(world, ["val"])
    dataset_dict["val"] = dataset_dict["val"].remove_columns(["annotations_json"])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) annotations_json.*found image_id, file_name"):
        dataset_dict_to_world(dataset_dict, tmp_path / "w")


def test_rebuild_unsafe_file_name(world, tmp_path):
    dataset_dict = world_to_dataset_dict(world, ["val"])
    dataset_dict["val"] = dataset_dict["val"].map(lambda row: {"file_name": "../escape.png"})
    with pytest.raises(ValueError, match="'../escape.png' is not a plain relative path"):
        dataset_dict_to_world(dataset_dict, tmp_path / "w")
    assert not (tmp_path / "escape.png").exists()
    assert not (tmp_path / "w").exists()


def test_rebuild_refuses_nonempty_root(world, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        dataset_dict_to_world(world_to_dataset_dict(world, ["val"]), tmp_path / "w")


def test_export_missing_image(world, tmp_path):
    broken = coco_world(tmp_path / "coco")
    (tmp_path / "coco" / "val2014" / "COCO_val2014_000000000007.png").unlink()
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000007.png: image file not found"):
        world_to_dataset_dict(broken)


def test_read_export_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        read_world_dataset(tmp_path / "absent")


def test_export_unknown_split(world, tmp_path):
    with pytest.raises(KeyError, match="valid splits: train, val, test"):
        write_world_dataset(world, tmp_path / "x", splits=["validation"])


# ----------------------------------------------------------------------------- lmms-lab POPE
def pope_rows(world: World) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """Return lmms-lab-style POPE columns built from the toy world, and the official records per split."""
    columns: dict[str, list] = {name: [] for name in POPE_FEATURES}
    official = {}
    id_by_file = world.image_id_by_file_name("test")
    for strategy in STRATEGIES:
        official[strategy] = build_pope(world.coco("test"), strategy=strategy, n_images=3, seed=2)
        for record in official[strategy]:
            path = world.image_path("test", id_by_file[record["image"]])
            columns["id"].append(str(len(columns["id"])))
            columns["question_id"].append(f"{strategy}-{record['question_id']}")
            columns["question"].append(record["text"])
            columns["answer"].append(record["label"])
            columns["image_source"].append(record["image"])
            columns["image"].append({"bytes": path.read_bytes(), "path": record["image"]})
            columns["category"].append(strategy)
    return columns, official


@pytest.fixture(scope="module")
def pope_copy(world, tmp_path_factory):
    """A local lmms-lab/POPE copy (default configuration: data/test-*.parquet) and the official question records."""
    root = tmp_path_factory.mktemp("pope")
    columns, official = pope_rows(world)
    (root / "data").mkdir()
    Dataset.from_dict(columns, features=POPE_FEATURES).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root, official


def test_pope_loader_records(pope_copy, tmp_path):
    root, official = pope_copy
    questions = load_pope_parquet(root, cache_dir=tmp_path)
    expected = [(strategy, record["image"], record["text"], record["label"]) for strategy in STRATEGIES for record in official[strategy]]
    assert [(q.split, q.image, q.text, q.label) for q in questions] == expected
    assert questions[0].question_id == "random-1"
    assert questions[0].source.endswith("test-00000-of-00001.parquet row 1")


def test_pope_scores_match_files(pope_copy, tmp_path):
    root, official = pope_copy
    questions = load_pope_parquet(root, cache_dir=tmp_path / "cache")
    answers = ["No" if index % 3 == 0 else "Yes, there is." for index in range(len(questions))]
    report = score_pope_answers(questions, answers)

    # The same questions and answers through the official question and answer files.
    paths, offset = [], 0
    answer_lines = []
    for strategy in STRATEGIES:
        paths.append(write_pope_questions(official[strategy], tmp_path / f"coco_pope_{strategy}.json"))
        for record in official[strategy]:
            answer_lines.append(json.dumps({"question": record["text"], "answer": answers[offset]}))
            offset += 1
    (tmp_path / "answers.json").write_text("\n".join(answer_lines) + "\n")
    assert report.to_dict() == score_pope_files(paths, tmp_path / "answers.json").to_dict()


def test_pope_answers_by_question_id(pope_copy, tmp_path):
    root, _ = pope_copy
    questions = load_pope_parquet(root, cache_dir=tmp_path)
    oracle = {q.question_id: q.label.capitalize() for q in questions}
    report = score_pope_answers(questions, oracle)
    assert list(report.splits) == list(STRATEGIES)
    for metrics in report.splits.values():
        assert metrics.accuracy == 1.0
        assert metrics.yes_ratio == 0.5
    assert report.mean_f1 == 1.0


def test_pope_full_layout_split_from_name(world, tmp_path):
    columns, official = pope_rows(world)
    full = tmp_path / "Full"
    full.mkdir()
    for strategy in ("adversarial", "random"):
        rows = [index for index, category in enumerate(columns["category"]) if category == strategy]
        subset = {name: [values[index] for index in rows] for name, values in columns.items() if name != "category"}
        features = Features({name: feature for name, feature in POPE_FEATURES.items() if name != "category"})
        Dataset.from_dict(subset, features=features).to_parquet(str(full / f"{strategy}-00000-of-00001.parquet"))
    questions = load_pope_parquet(full, cache_dir=tmp_path / "cache")
    assert [q.split for q in questions] == ["adversarial"] * len(official["adversarial"]) + ["random"] * len(official["random"])


def test_pope_missing_column(world, tmp_path):
    columns, _ = pope_rows(world)
    del columns["image_source"]
    features = Features({name: feature for name, feature in POPE_FEATURES.items() if name != "image_source"})
    path = tmp_path / "test-00000-of-00001.parquet"
    Dataset.from_dict(columns, features=features).to_parquet(str(path))
    with pytest.raises(ValueError) as caught:
        load_pope_parquet(tmp_path, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "missing column(s) image_source" in message
    assert str(path) in message
    assert "found columns id, question_id, question, answer, image, category" in message


def test_pope_invalid_answer(tmp_path):
    columns = {"question_id": ["1"], "question": ["Is there a dog in the image?"], "answer": ["maybe"],
               "image_source": ["a"], "category": ["random"]}
    Dataset.from_dict(columns).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(ValueError, match=r"test.parquet row 1: the 'answer' column must be yes or no, got 'maybe'"):
        load_pope_parquet(tmp_path, cache_dir=tmp_path / "cache")


def test_loader_hub_id_rejected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lmms-lab/POPE: not found.*never downloads"):
        load_pope_parquet("lmms-lab/POPE")


def test_loader_folder_without_parquet(tmp_path):
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no \.parquet files .*found README\.md"):
        parquet_files(tmp_path)


# ----------------------------------------------------------------------------- lmms-lab MME
def mme_columns(key_records, image_bytes: bytes) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in MME_FEATURES}
    for record in key_records:
        columns["question_id"].append(f"{record.subtask}/{record.image}")
        columns["image"].append({"bytes": image_bytes, "path": record.image})
        columns["question"].append(record.question)
        columns["answer"].append(record.label.capitalize())
        columns["category"].append(record.subtask)
    return columns


@pytest.fixture(scope="module")
def mme_copy(world, tmp_path_factory):
    """A local lmms-lab/MME copy built from the toy world's MME questions, and the matching eval-tool key."""
    root = tmp_path_factory.mktemp("mme")
    mme_set = build_mme_set(world, "test", load_task_definition("mme"), seed=0)
    key_records = [record for subtask in mme_set.subtasks for record in mme_set.records(subtask)]
    (root / "data").mkdir()
    Dataset.from_dict(mme_columns(key_records, png_bytes((1, 2, 3))), features=MME_FEATURES).to_parquet(
        str(root / "data" / "test-00000-of-00001.parquet"))
    return root, key_records


def test_mme_loader_records(mme_copy, tmp_path):
    root, key_records = mme_copy
    records = load_mme_parquet(root, cache_dir=tmp_path)
    assert [(r.subtask, r.question, r.label, r.answer) for r in records] == [(r.subtask, r.question, r.label, None) for r in key_records]
    assert records[0].image == f"existence/{key_records[0].image}"


def test_mme_constant_yes_scores_50(mme_copy, tmp_path):
    records = load_mme_parquet(mme_copy[0], cache_dir=tmp_path)
    report = score_mme(attach_mme_answers(records, ["Yes"] * len(records)))
    assert list(report.subtasks) == ["existence", "count", "position", "color"]
    for score in report.subtasks.values():
        assert score.score == pytest.approx(50.0)


def test_mme_scores_match_results_dir(mme_copy, tmp_path):
    root, key_records = mme_copy
    records = load_mme_parquet(root, cache_dir=tmp_path / "cache")
    answers = ["yes" if index % 4 else "No, it is not." for index in range(len(records))]
    hf_report = score_mme(attach_mme_answers(records, answers))

    results = tmp_path / "results"
    results.mkdir()
    for subtask in ("existence", "count", "position", "color"):
        lines = [f"{r.image}\t{r.question}\t{r.label.capitalize()}\t{answers[i]}" for i, r in enumerate(key_records) if r.subtask == subtask]
        (results / f"{subtask}.txt").write_text("\n".join(lines) + "\n")
    assert hf_report.to_dict() == score_mme(load_mme_results_dir(results)).to_dict()


def test_mme_answers_by_key(mme_copy, tmp_path):
    records = load_mme_parquet(mme_copy[0], cache_dir=tmp_path)
    oracle = {(r.image, r.question): r.label for r in records}
    report = score_mme(attach_mme_answers(records, oracle))
    assert all(score.score == pytest.approx(200.0) for score in report.subtasks.values())
    del oracle[(records[3].image, records[3].question)]
    with pytest.raises(ValueError, match="1 of .* MME questions have no answer"):
        attach_mme_answers(records, oracle)


def test_mme_missing_column(tmp_path):
    Dataset.from_dict({"question_id": ["a/1.png"], "question": ["q"], "answer": ["Yes"]}).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(ValueError, match=r"t\.parquet: missing column\(s\) category; found columns question_id, question, answer"):
        load_mme_parquet(tmp_path / "t.parquet", cache_dir=tmp_path / "cache")


def test_mme_real_llava_scores(realfile, tmp_path):
    # The real eval-tool key as an lmms-lab/MME copy; LLaVA-1.5-13B's answers must keep their published totals.
    key_dir = realfile("RITUAL/experiments/eval/eval_mme/Your_Results")
    answered = load_mme_llava_answers(realfile("VLM-Benchmarks/playground/data/eval/MME/answers/llava-v1.5-13b.jsonl"), key_dir)
    Dataset.from_dict(mme_columns(load_mme_key_dir(key_dir), png_bytes((0, 0, 0))), features=MME_FEATURES).to_parquet(
        str(tmp_path / "test-00000-of-00001.parquet"))
    records = load_mme_parquet(tmp_path, cache_dir=tmp_path / "cache")
    answers = {(f"{r.subtask}/{r.image}", r.question): r.answer for r in answered}
    report = score_mme(attach_mme_answers(records, answers))
    assert len(records) == 2374
    assert round(report.perception, 2) == 1531.32
    assert round(report.cognition, 2) == 295.36
