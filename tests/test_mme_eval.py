"""MME on the toy world: question wording, answering with a model, and scoring."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from halluc_bench.tasks.definitions import TaskDefinition, load_task_definition
from halluc_bench.tasks.mme import load_mme_key_dir
from halluc_bench.tasks.mme_eval import build_mme_set, definition_templates, evaluate_mme
from halluc_bench.world import MME_SUBTASKS, ToyWorldConfig, World, build_mme_lines, generate_toy_world

SNAPSHOT = Path(__file__).parent / "fixtures" / "snapshots" / "mme_questions.txt"
UPDATE_SNAPSHOTS_ENV = "HALLUC_BENCH_UPDATE_SNAPSHOTS"
SNAPSHOT_WORLD = ToyWorldConfig(seed=7, n_train=4, n_val=2, n_test=5, caption_hallucination_rate=0.0)


class ScriptedVlm:
    """A stand-in model whose answers come from a function of the questions; it counts preprocessing calls."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.preprocess_calls = 0
        self.processor = SimpleNamespace(image_processor=SimpleNamespace(to_json_string=lambda: "{}"))

    def pixel_values(self, images):
        self.preprocess_calls += 1
        return torch.zeros(len(images), 3, 2, 2)

    def answer_yes_no(self, pixel_values, questions, batch_size=64):
        assert len(pixel_values) == len(questions)
        return self.answer(list(questions))


@pytest.fixture(scope="module")
def definition() -> TaskDefinition:
    return load_task_definition("mme")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return generate_toy_world(ToyWorldConfig(seed=3, n_train=10, n_val=4, n_test=24, caption_hallucination_rate=0.0), tmp_path_factory.mktemp("w") / "world")


@pytest.fixture(scope="module")
def mme_set(world, definition):
    return build_mme_set(world, "test", definition, seed=0)


def labels_in_order(mme_set) -> list[str]:
    return [line.split("\t")[2] for subtask in mme_set.subtasks for line in mme_set.lines[subtask]]


def snapshot_text(definition: TaskDefinition, world: World) -> str:
    mme_set = build_mme_set(world, "test", definition, seed=0)
    lines = [f"# MME task definition version {definition.version}; templates as asked, answer_suffix appended"]
    lines.extend(f"{key}\t{template}" for key, template in sorted(definition_templates(definition).items()))
    lines.append(f"# toy world seed {SNAPSHOT_WORLD.seed}, split test, question seed 0: subtask, image, question, label")
    for subtask in mme_set.subtasks:
        lines.extend(f"{subtask}\t{line}" for line in mme_set.lines[subtask])
    return "\n".join(lines) + "\n"


def test_snapshot_question_wording(definition, tmp_path):
    world = generate_toy_world(SNAPSHOT_WORLD, tmp_path / "snapshot_world")
    text = snapshot_text(definition, world)
    if os.environ.get(UPDATE_SNAPSHOTS_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(text, encoding="utf-8")
    if not SNAPSHOT.is_file():
        pytest.fail(f"{SNAPSHOT} is missing; run with {UPDATE_SNAPSHOTS_ENV}=1 to write it")
    assert text == SNAPSHOT.read_text(encoding="utf-8"), f"MME wording changed; rerun with {UPDATE_SNAPSHOTS_ENV}=1 and review the diff"


def test_snapshot_covers_every_subtask():
    text = SNAPSHOT.read_text(encoding="utf-8")
    for subtask in MME_SUBTASKS:
        assert f"\n{subtask}\t" in text
    assert "Is there only one " in text


def test_templates_end_with_suffix(definition):
    suffix = definition["answer_suffix"]
    for template in definition_templates(definition).values():
        assert template.endswith(suffix)
        assert template.count(suffix) == 1


def test_set_questions_end_with_suffix(mme_set, definition):
    for subtask in mme_set.subtasks:
        for question in mme_set.questions(subtask):
            assert question.endswith(definition["answer_suffix"])
            assert question.count("Please answer yes or no.") == 1


def test_set_matches_world_default_wording(world, mme_set):
    # The world's built-in templates carry the suffix; the task definition must ask the same questions.
    assert mme_set.lines == build_mme_lines(world, "test", seed=0)


def test_set_covers_all_subtasks(mme_set):
    assert mme_set.subtasks == list(MME_SUBTASKS)


def test_set_image_ids_match_lines(world, mme_set):
    for subtask in mme_set.subtasks:
        names = [world.image_info("test", image_id)["file_name"] for image_id in mme_set.image_ids[subtask]]
        assert names == [line.split("\t")[0] for line in mme_set.lines[subtask]]


def test_set_seed_changes_questions(world, definition, mme_set):
    other = build_mme_set(world, "test", definition, seed=1)
    assert other.lines != mme_set.lines
    assert build_mme_set(world, "test", definition, seed=0).lines == mme_set.lines


def test_set_key_reads_back(mme_set, tmp_path):
    written = mme_set.write_key(tmp_path / "key")
    assert sorted(written) == sorted(mme_set.subtasks)
    key = load_mme_key_dir(tmp_path / "key")
    expected = [record for subtask in mme_set.subtasks for record in mme_set.records(subtask)]
    assert [(r.subtask, r.image, r.question, r.label) for r in key] == [(r.subtask, r.image, r.question, r.label) for r in expected]


def test_evaluate_constant_yes_scores_50(world, definition):
    mme_set = build_mme_set(world, "test", definition, seed=0)
    result = evaluate_mme(ScriptedVlm(lambda questions: ["Yes"] * len(questions)), mme_set)
    for subtask in MME_SUBTASKS:
        assert result[subtask] == pytest.approx(50.0)
        assert result["subtasks"][subtask]["acc"] == pytest.approx(0.5)
        assert result["subtasks"][subtask]["acc_plus"] == 0.0


def test_evaluate_one_wrong_answer(world, definition):
    mme_set = build_mme_set(world, "test", definition, seed=0)
    labels = labels_in_order(mme_set)
    answers = iter(["No", *labels[1:]])  # only the first existence question is answered wrong
    result = evaluate_mme(ScriptedVlm(lambda questions: [next(answers) for _ in questions]), mme_set)
    questions = len(mme_set.lines["existence"])
    images = questions // 2
    assert result["existence"] == pytest.approx(100 * ((questions - 1) / questions + (images - 1) / images))
    for subtask in ("count", "position", "color"):
        assert result[subtask] == pytest.approx(200.0)


def test_evaluate_result_layout(world, definition):
    mme_set = build_mme_set(world, "test", definition, seed=0)
    result = evaluate_mme(ScriptedVlm(lambda questions: ["No"] * len(questions)), mme_set)
    assert result["task_version"] == definition.version
    assert list(result["subtasks"]) == list(MME_SUBTASKS)
    for subtask in MME_SUBTASKS:
        assert set(result["subtasks"][subtask]) == {"acc", "acc_plus", "score", "n"}
        assert result["subtasks"][subtask]["n"] == len(mme_set.lines[subtask])
        assert result[subtask] == result["subtasks"][subtask]["score"]


def test_evaluate_preprocesses_once(world, definition):
    mme_set = build_mme_set(world, "test", definition, seed=0)
    assert mme_set.pixels == {}
    vlm = ScriptedVlm(lambda questions: ["Yes"] * len(questions))
    evaluate_mme(vlm, mme_set)
    evaluate_mme(vlm, mme_set)
    assert vlm.preprocess_calls == 1
    assert sorted(mme_set.pixels) == mme_set.all_image_ids()


def test_build_with_vlm_preprocesses(world, definition):
    vlm = ScriptedVlm(lambda questions: ["Yes"] * len(questions))
    mme_set = build_mme_set(world, "test", definition, seed=0, vlm=vlm)
    assert vlm.preprocess_calls == 1
    assert sorted(mme_set.pixels) == mme_set.all_image_ids()


def test_evaluate_tiny_vlm(tiny_vlm, world, definition):
    mme_set = build_mme_set(world, "test", definition, seed=0, vlm=tiny_vlm)
    result = evaluate_mme(tiny_vlm, mme_set)
    for subtask in mme_set.subtasks:
        pixels = torch.stack([mme_set.pixels[i] for i in mme_set.image_ids[subtask]])
        answers = tiny_vlm.answer_yes_no(pixels, mme_set.questions(subtask))
        labels = [line.split("\t")[2] for line in mme_set.lines[subtask]]
        right = sum(answer == label for answer, label in zip(answers, labels))
        assert result["subtasks"][subtask]["acc"] == pytest.approx(right / len(labels))
        assert 0.0 <= result[subtask] <= 200.0


def test_definition_missing_template(definition):
    templates = {key: value for key, value in definition["templates"].items() if key != "count_one"}
    broken = TaskDefinition("mme", 1, {**definition.settings, "templates": templates}, Path("mme.yaml"))
    with pytest.raises(ValueError, match="count_one"):
        definition_templates(broken)


def test_definition_suffix_braces_literal(world, definition):
    custom = TaskDefinition("mme", 1, {**definition.settings, "answer_suffix": " Reply {yes} or {no}."}, None)
    mme_set = build_mme_set(world, "test", custom, seed=0)
    assert mme_set.questions("existence")[0].endswith("in the image? Reply {yes} or {no}.")


def test_definition_wrong_task(world):
    with pytest.raises(ValueError, match="'pope'"):
        build_mme_set(world, "test", load_task_definition("pope"), seed=0)


def test_color_missing_in_coco_world(world, definition, tmp_path):
    # A world without colour annotations has no color questions; its score is None, not 0.
    import json
    import shutil

    root = tmp_path / "plain"
    shutil.copytree(world.root / "annotations", root / "annotations")
    shutil.copytree(world.root / "test", root / "test")
    for path in (root / "annotations").glob("instances_*.json"):
        data = json.loads(path.read_text())
        for annotation in data["annotations"]:
            annotation.pop("color")
        path.write_text(json.dumps(data))
    mme_set = build_mme_set(World.from_dir(root), "test", definition, seed=0)
    result = evaluate_mme(ScriptedVlm(lambda questions: ["Yes"] * len(questions)), mme_set)
    assert result["color"] is None
    assert "color" not in result["subtasks"]
    assert result["existence"] == pytest.approx(50.0)
