"""Tests of the MME-style question files written for a world's split."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from halluc_bench.world import ToyWorldConfig, World, generate_toy_world, word_tokens, write_mme_questions
from halluc_bench.world.captions import NUMBER_WORDS, plural

SUBTASKS = ("existence", "count", "position", "color")
EXISTENCE = re.compile(r"^Is there an? (?P<object>.+) in the image\? Please answer yes or no\.$")
COUNT_MANY = re.compile(r"^Are there (?P<number>\w+) (?P<objects>.+) in the image\? Please answer yes or no\.$")
COUNT_ONE = re.compile(r"^Is there only one (?P<object>.+) in the image\? Please answer yes or no\.$")
POSITION = re.compile(
    r"^Is the (?P<object>.+?) (?P<relation>on the left of|on the right of|above|below) the (?P<other>.+)"
    r"\? Please answer yes or no\.$"
)
COLOR = re.compile(r"^Is the (?P<object>.+) (?P<color>\w+)\? Please answer yes or no\.$")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    config = ToyWorldConfig(seed=11, n_train=400, n_val=10, n_test=200)
    return generate_toy_world(config, tmp_path_factory.mktemp("mme") / "world")


@pytest.fixture(scope="module")
def files(world, tmp_path_factory) -> dict[str, Path]:
    return write_mme_questions(world, "test", tmp_path_factory.mktemp("questions"))


def layout_problems(lines: list[str]) -> list[str]:
    """Return every violation of the MME answer-key layout: pairs of lines per image, Yes then No."""
    problems = []
    if len(lines) % 2:
        problems.append(f"odd line count {len(lines)}")
    seen = set()
    for index in range(0, len(lines) - 1, 2):
        first, second = lines[index].split("\t"), lines[index + 1].split("\t")
        if len(first) < 3 or len(second) < 3:
            problems.append(f"line {index + 1}: fewer than 3 tab-separated fields")
            continue
        if first[0] != second[0]:
            problems.append(f"line {index + 1}: the two lines name different images")
        if (first[2], second[2]) != ("Yes", "No"):
            problems.append(f"line {index + 1}: answers {first[2]!r}, {second[2]!r} instead of Yes, No")
        if first[0] in seen:
            problems.append(f"line {index + 1}: image {first[0]} appears in two pairs")
        seen.add(first[0])
    return problems


def read_pairs(path: Path) -> list[tuple[str, str, str]]:
    """Return (image file, Yes question, No question) per image."""
    lines = path.read_text(encoding="utf-8").splitlines()
    pairs = []
    for index in range(0, len(lines), 2):
        image_file, yes_question, _ = lines[index].split("\t")
        pairs.append((image_file, yes_question, lines[index + 1].split("\t")[1]))
    return pairs


def annotations_by_file(world: World, split: str) -> dict[str, list[dict]]:
    names = {c["id"]: c["name"] for c in world.coco(split).dataset["categories"]}
    result = {}
    for file_name, image_id in world.image_id_by_file_name(split).items():
        result[file_name] = [{**a, "name": names[a["category_id"]]} for a in world.annotations(split, image_id)]
    return result


def test_layout_checker_accepts_official_key(realfile):
    official = realfile("RITUAL/experiments/eval/eval_mme/Your_Results/existence.txt")
    assert layout_problems(official.read_text(encoding="utf-8").splitlines()) == []
    assert layout_problems(["a.jpg\tq\tNo", "a.jpg\tq\tYes"]) != []


def test_mme_files_layout(world, files):
    assert set(files) == set(SUBTASKS)
    file_names = set(world.image_id_by_file_name("test"))
    for subtask, path in files.items():
        assert path.name == f"{subtask}.txt"
        lines = path.read_text(encoding="utf-8").splitlines()
        assert layout_problems(lines) == []
        assert {line.split("\t")[0] for line in lines} <= file_names
        assert all(len(line.split("\t")) == 3 for line in lines)


def test_mme_existence_covers_every_image(world, files):
    assert len(read_pairs(files["existence"])) == len(world.image_ids("test"))
    assert len(read_pairs(files["count"])) == len(world.image_ids("test"))


def test_mme_existence_answers_true(world, files):
    objects = annotations_by_file(world, "test")
    for file_name, yes, no in read_pairs(files["existence"]):
        present = {a["name"] for a in objects[file_name]}
        assert EXISTENCE.match(yes)["object"] in present
        assert EXISTENCE.match(no)["object"] not in present


def test_mme_existence_negatives_mostly_partners(world, files):
    partners = world.config.partner_of()
    objects = annotations_by_file(world, "test")
    hits = total = 0
    for file_name, _, no in read_pairs(files["existence"]):
        present = {a["name"] for a in objects[file_name]}
        absent_partners = {partners[n] for n in present if n in partners} - present
        if absent_partners:
            total += 1
            hits += EXISTENCE.match(no)["object"] in absent_partners
    assert total >= 20
    assert hits / total >= 0.65


def test_mme_existence_uses_article_an(tmp_path):
    config = ToyWorldConfig(seed=2, n_train=30, n_val=5, n_test=30, categories=("umbrella", "person", "car"),
                            pairs=(("umbrella", "person"),), caption_hallucination_rate=0.0)
    world = generate_toy_world(config, tmp_path / "w")
    text = write_mme_questions(world, "test", tmp_path / "q")["existence"].read_text()
    assert "Is there an umbrella in the image?" in text
    assert "Is there a umbrella" not in text


def parse_count(question: str) -> tuple[str, int]:
    one = COUNT_ONE.match(question)
    if one:
        return one["object"], 1
    many = COUNT_MANY.match(question)
    return many["objects"], NUMBER_WORDS.index(many["number"]) + 1


def test_mme_count_answers_true(world, files):
    objects = annotations_by_file(world, "test")
    singular = {plural(name): name for name in world.category_names()}
    repeated_counts = 0
    for file_name, yes, no in read_pairs(files["count"]):
        names = [a["name"] for a in objects[file_name]]
        yes_noun, yes_count = parse_count(yes)
        no_noun, no_count = parse_count(no)
        yes_name = singular.get(yes_noun, yes_noun)
        assert names.count(yes_name) == yes_count
        assert singular.get(no_noun, no_noun) == yes_name
        assert no_count != yes_count
        repeated_counts += yes_count > 1
    assert repeated_counts > 0


def test_mme_position_answers_true(world, files):
    objects = annotations_by_file(world, "test")
    opposite = {"on the left of": "on the right of", "on the right of": "on the left of",
                "above": "below", "below": "above"}
    for file_name, yes, no in read_pairs(files["position"]):
        cells = {a["name"]: a["position"] for a in objects[file_name]}
        match = POSITION.match(yes)
        row_a, column_a = cells[match["object"]].split()
        row_b, column_b = cells[match["other"]].split()
        relation = match["relation"]
        if relation == "on the left of":
            assert (column_a, column_b) == ("left", "right")
        elif relation == "on the right of":
            assert (column_a, column_b) == ("right", "left")
        elif relation == "above":
            assert (row_a, row_b) == ("top", "bottom")
        else:
            assert (row_a, row_b) == ("bottom", "top")
        negative = POSITION.match(no)
        assert (negative["object"], negative["other"]) == (match["object"], match["other"])
        assert negative["relation"] == opposite[relation]


def test_mme_position_skips_single_object_images(world, files):
    objects = annotations_by_file(world, "test")
    questioned = {file_name for file_name, _, _ in read_pairs(files["position"])}
    singles = {f for f, annotations in objects.items() if len({a["name"] for a in annotations}) == 1}
    assert singles
    assert not questioned & singles


def test_mme_color_answers_true(world, files):
    objects = annotations_by_file(world, "test")
    for file_name, yes, no in read_pairs(files["color"]):
        match, negative = COLOR.match(yes), COLOR.match(no)
        colors = {a["color"] for a in objects[file_name] if a["name"] == match["object"]}
        assert colors == {match["color"]}
        assert negative["object"] == match["object"]
        assert negative["color"] != match["color"]
        assert negative["color"] in world.config.colors


def test_mme_deterministic(world, files, tmp_path):
    again = write_mme_questions(world, "test", tmp_path / "again")
    other_seed = write_mme_questions(world, "test", tmp_path / "other", seed=1)
    for subtask in SUBTASKS:
        assert again[subtask].read_bytes() == files[subtask].read_bytes()
    assert any(other_seed[s].read_bytes() != files[s].read_bytes() for s in SUBTASKS)


def test_mme_vocabulary_covers_questions(world, files):
    vocabulary = set(world.vocabulary())
    for path in files.values():
        for line in path.read_text(encoding="utf-8").splitlines():
            _, question, answer = line.split("\t")
            assert set(word_tokens(question)) <= vocabulary, question
            assert answer.lower() in vocabulary


def test_mme_custom_template(world, tmp_path):
    templates = {"existence": "Does the image contain {article} {object}? Answer yes or no."}
    paths = write_mme_questions(world, "test", tmp_path, templates)
    first = paths["existence"].read_text().splitlines()[0].split("\t")[1]
    assert re.fullmatch(r"Does the image contain an? .+\? Answer yes or no\.", first)
    assert "Does" not in paths["count"].read_text()
    assert "contain" in world.vocabulary(templates)


def test_mme_template_errors(world, tmp_path):
    with pytest.raises(ValueError, match=r"unknown MME template key 'exist'; valid keys: existence"):
        write_mme_questions(world, "test", tmp_path, {"exist": "Is there {object}?"})
    with pytest.raises(ValueError, match=r"unknown placeholders \['thing'\]"):
        write_mme_questions(world, "test", tmp_path, {"existence": "Is there {thing}?"})
    with pytest.raises(ValueError, match=r"missing \['color'\]"):
        write_mme_questions(world, "test", tmp_path, {"color": "Is the {object} bright?"})
    with pytest.raises(ValueError, match=r"tab or line break"):
        write_mme_questions(world, "test", tmp_path, {"existence": "Is there\t{object}?"})
    assert list(tmp_path.iterdir()) == []


def test_mme_real_coco_sample(tmp_path, realfile):
    annotations = tmp_path / "coco" / "annotations"
    annotations.mkdir(parents=True)
    shutil.copy(realfile("mmdetection/tests/data/coco_sample.json"), annotations / "instances_val2017.json")
    world = World.from_dir(tmp_path / "coco")
    paths = write_mme_questions(world, "val2017", tmp_path / "q")
    assert set(paths) == {"existence", "count"}
    existence = paths["existence"].read_text().splitlines()
    # fake1.jpg contains both categories, so no absent object is left to ask about; fake3.jpg has no objects.
    assert existence == [
        "fake2.jpg\tIs there a bus in the image? Please answer yes or no.\tYes",
        "fake2.jpg\tIs there a car in the image? Please answer yes or no.\tNo",
    ]
    count_images = [line.split("\t")[0] for line in paths["count"].read_text().splitlines()]
    assert count_images == ["fake1.jpg", "fake1.jpg", "fake2.jpg", "fake2.jpg"]
