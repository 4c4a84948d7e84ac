"""POPE: answer parsers, metrics, file pairing, the question builder, and parity with real outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halluc_bench.registry import RegistryError
from halluc_bench.tasks.pope import (
    POPE_PARSERS,
    build_pope,
    parse_answer_official,
    parse_answer_strict,
    score_pope,
    score_pope_files,
    write_pope_questions,
)
from halluc_bench.tasks.pope_build import load_coco_instances
from halluc_bench.tasks.pope_files import read_pope_questions

FIXTURES = Path(__file__).parent / "fixtures" / "pope"
LLAVA_POPE = "VLM-Benchmarks/playground/data/eval/pope"

# (answer, official rule, strict rule)
ANSWER_TABLE = [
    ("Yes", "yes", "yes"),
    ("No", "no", "no"),
    ("Yes, there is a dog in the image.", "yes", "yes"),
    ("No, there is no dog in the image.", "no", "no"),
    ("No.", "no", "no"),
    ("", "yes", "unknown"),
    ("   ", "yes", "unknown"),
    ("There is no dog in the image.", "no", "no"),
    ("There's no cat.", "no", "no"),
    ("There is a dog sitting on the couch.", "yes", "yes"),
    ("Yes. The image shows a man riding a bicycle down a busy street with cars parked along it; no helmet is visible.", "yes", "yes"),
    ("I'm not sure whether there is a dog.", "no", "unknown"),
    ("Maybe.", "yes", "unknown"),
    ("I'm sorry, but I cannot answer that.", "yes", "unknown"),
    ("Not in the image.", "yes", "no"),  # the official rule misses a capitalized "Not"
    ("NO", "yes", "no"),  # the official rule matches only "No", "no" and "not"
    ("no\n", "yes", "no"),  # the official rule splits on single spaces, so "no\n" is no token "no"
    ("Nope", "yes", "no"),
    ("The dog is not visible, but a cat is.", "no", "unknown"),
    ("Yes, but it is hard to tell.", "yes", "unknown"),
    ("Yes or no", "no", "unknown"),
    ("Answer: Yes", "yes", "yes"),
    ("A dog.", "yes", "unknown"),
    ("It is possible that there is a dog", "yes", "unknown"),
    ("**No**, I don't see one.", "yes", "no"),  # "**No**" is not the token "No"
]


@pytest.mark.parametrize(("answer", "official", "strict"), ANSWER_TABLE)
def test_parser_table(answer, official, strict):
    assert parse_answer_official(answer) == official
    assert parse_answer_strict(answer) == strict


def test_parser_table_size():
    assert len(ANSWER_TABLE) >= 15


def test_parser_registry_names():
    assert POPE_PARSERS.names() == ["official", "strict"]


def test_parser_unknown_name_lists_valid():
    with pytest.raises(RegistryError, match="official, strict"):
        score_pope(["yes"], ["Yes"], parser="lenient")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_fuzz(text):
    assert parse_answer_official(text) in ("yes", "no")
    assert parse_answer_strict(text) in ("yes", "no", "unknown")


def test_metrics_constant_yes_balanced():
    labels = ["yes", "no"] * 50
    metrics = score_pope(labels, ["Yes"] * 100)
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (50, 50, 0, 0)
    assert metrics.accuracy == 0.5
    assert metrics.precision == 0.5
    assert metrics.recall == 1.0
    assert metrics.f1 == pytest.approx(2 / 3)
    assert metrics.yes_ratio == 1.0


def test_metrics_constant_no_balanced():
    labels = ["yes", "no"] * 50
    metrics = score_pope(labels, ["No"] * 100)
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (0, 0, 50, 50)
    assert metrics.accuracy == 0.5
    assert metrics.precision == 0.0
    assert metrics.recall == 0.0
    assert metrics.f1 == 0.0
    assert metrics.yes_ratio == 0.0


def test_metrics_strict_excludes_unknown():
    metrics = score_pope(["yes", "no", "yes", "no"], ["Yes", "", "Maybe", "No"], parser="strict")
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (1, 0, 1, 0)
    assert metrics.unknown == 2
    assert metrics.n == 4
    assert metrics.accuracy == 1.0
    assert metrics.unknown_rate == 0.5


def test_metrics_official_counts_unknown():
    metrics = score_pope(["yes", "no", "yes", "no"], ["Yes", "", "Maybe", "No"])
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (2, 1, 1, 0)
    assert metrics.unknown == 2
    assert metrics.accuracy == 0.75


def test_metrics_all_unknown_no_crash():
    metrics = score_pope(["yes", "no"], ["", "hmm"], parser="strict")
    assert metrics.accuracy == 0.0
    assert metrics.f1 == 0.0
    assert metrics.unknown_rate == 1.0


def test_metrics_length_mismatch():
    with pytest.raises(ValueError, match="2 labels but 1 answers"):
        score_pope(["yes", "no"], ["Yes"])


def test_metrics_invalid_label():
    with pytest.raises(ValueError, match="'maybe'"):
        score_pope(["maybe"], ["Yes"])


def test_metrics_to_dict_keys():
    keys = set(score_pope(["yes"], ["Yes"]).to_dict())
    assert {"tp", "fp", "tn", "fn", "n", "accuracy", "precision", "recall", "f1", "yes_ratio", "unknown"} <= keys


# Pairing answers with questions, on small hand-written files.


def test_files_merged_with_labels():
    report = score_pope_files(
        [FIXTURES / "coco_pope_random.json", FIXTURES / "coco_pope_adversarial.json", FIXTURES / "merged_questions.jsonl"],
        FIXTURES / "answers_llava.jsonl",
    )
    adversarial = report.splits["adversarial"]
    random_split = report.splits["random"]
    assert (adversarial.tp, adversarial.fp, adversarial.tn, adversarial.fn) == (1, 1, 1, 1)
    assert (random_split.tp, random_split.fp, random_split.tn, random_split.fn) == (3, 0, 3, 0)
    assert random_split.unknown == 2
    assert report.mean_f1 == pytest.approx(0.75)
    assert report.missing_splits == []


def test_files_merged_strict_parser():
    report = score_pope_files(
        [FIXTURES / "coco_pope_random.json", FIXTURES / "coco_pope_adversarial.json", FIXTURES / "merged_questions.jsonl"],
        FIXTURES / "answers_llava.jsonl",
        parser="strict",
    )
    random_split = report.splits["random"]
    assert (random_split.tp, random_split.fp, random_split.tn, random_split.fn) == (2, 0, 2, 0)
    assert random_split.unknown == 2
    assert random_split.unknown_rate == pytest.approx(1 / 3)


def test_files_merged_reordered(tmp_path):
    lines = (FIXTURES / "merged_questions.jsonl").read_text().splitlines()
    reordered = tmp_path / "merged.jsonl"
    reordered.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    report = score_pope_files([FIXTURES / "coco_pope_adversarial.json", FIXTURES / "coco_pope_random.json", reordered], FIXTURES / "answers_llava.jsonl")
    adversarial = report.splits["adversarial"]
    assert (adversarial.tp, adversarial.fp, adversarial.tn, adversarial.fn) == (1, 1, 1, 1)


def test_files_question_without_label(tmp_path):
    merged = tmp_path / "merged.jsonl"
    merged.write_text(json.dumps({"question_id": 1, "image": "image_003.jpg", "text": "Is there a bus in the image?", "category": "adversarial"}) + "\n")
    with pytest.raises(ValueError, match="has no label in split 'adversarial'"):
        score_pope_files([FIXTURES / "coco_pope_adversarial.json", merged], FIXTURES / "answers_llava.jsonl")


def test_files_split_without_label_file():
    with pytest.raises(ValueError, match="split 'random' has no labels"):
        score_pope_files([FIXTURES / "coco_pope_adversarial.json", FIXTURES / "merged_questions.jsonl"], FIXTURES / "answers_llava.jsonl")


def test_files_official_positional():
    report = score_pope_files([FIXTURES / "coco_pope_random.json"], FIXTURES / "answers_official_random.json")
    metrics = report.splits["random"]
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (2, 1, 2, 1)
    assert metrics.f1 == pytest.approx(2 / 3)
    assert metrics.yes_ratio == 0.5


def test_files_positional_count_mismatch():
    with pytest.raises(ValueError, match="6 answer records but the question files contain 4 questions"):
        score_pope_files([FIXTURES / "coco_pope_adversarial.json"], FIXTURES / "answers_official_random.json")


def test_files_json_array_crlf(tmp_path):
    records = [json.loads(line) for line in (FIXTURES / "coco_pope_random.json").read_text().splitlines()]
    array_file = tmp_path / "coco_pope_random.json"
    array_file.write_bytes(json.dumps(records, indent=4).replace("\n", "\r\n").encode())
    report = score_pope_files([array_file], FIXTURES / "answers_official_random.json")
    metrics = report.splits["random"]
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (2, 1, 2, 1)


def test_files_extra_answers_reported():
    with pytest.raises(ValueError, match=r"2 questions have no answer and 6 answers"):
        score_pope_files([FIXTURES / "coco_pope_random.json"], FIXTURES / "answers_llava.jsonl")


def test_files_ids_clash_across_splits(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "text": "Yes"}) + "\n")
    with pytest.raises(ValueError, match="question_id 1 occurs in both"):
        score_pope_files([FIXTURES / "coco_pope_random.json", FIXTURES / "coco_pope_adversarial.json"], answers)


def test_files_partial_answers(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "text": "Yes"}) + "\n" for i in (1, 2, 3)))
    report = score_pope_files([FIXTURES / "merged_questions.jsonl", FIXTURES / "coco_pope_random.json", FIXTURES / "coco_pope_adversarial.json"], answers)
    assert report.splits["adversarial"].n == 3
    assert report.missing_answers == {"adversarial": 1}
    assert report.missing_splits == ["random"]
    assert report.mean_f1 is None


def test_files_duplicate_answer(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text((json.dumps({"question_id": 1, "text": "Yes"}) + "\n") * 2)
    with pytest.raises(ValueError, match="second answer to question_id 1"):
        score_pope_files([FIXTURES / "coco_pope_adversarial.json"], answers)


def test_files_invalid_label(tmp_path):
    questions = tmp_path / "coco_pope_random.json"
    questions.write_text(json.dumps({"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"record 1: label must be 'yes' or 'no'"):
        read_pope_questions(questions)


# Question builder.


def _objects(questions, image):
    return [(re.match(r"Is there an? (.+) in the image\?", q["text"]).group(1), q["label"]) for q in questions if q["image"] == image]


def test_build_six_questions_per_image():
    questions = build_pope(FIXTURES / "instances.json", strategy="random", n_images=5, seed=0)
    assert len(questions) == 30
    assert [q["question_id"] for q in questions] == list(range(1, 31))
    assert [q["label"] for q in questions[:6]] == ["yes", "no"] * 3
    assert sorted({q["image"] for q in questions}) == [f"image_{i:03d}.jpg" for i in range(1, 6)]


def test_build_positives_in_annotation_order():
    questions = build_pope(FIXTURES / "instances.json", strategy="random", n_images=5, seed=0)
    positives = [name for name, label in _objects(questions, "image_001.jpg") if label == "yes"]
    assert positives == ["dog", "person", "bicycle"]


def test_build_negatives_absent_and_distinct():
    present = {"image_001.jpg": {"dog", "person", "bicycle", "car"}, "image_003.jpg": {"cat", "person", "apple", "bench"}}
    for seed in range(20):
        questions = build_pope(FIXTURES / "instances.json", strategy="random", n_images=5, seed=seed)
        for image, objects in present.items():
            negatives = [name for name, label in _objects(questions, image) if label == "no"]
            assert len(set(negatives)) == 3
            assert not set(negatives) & objects


def test_build_popular_negatives():
    questions = build_pope(FIXTURES / "instances.json", strategy="popular", n_images=5, seed=3)
    expected = {
        "image_001.jpg": ["bench", "apple", "umbrella"],
        "image_002.jpg": ["dog", "bicycle", "apple"],
        "image_003.jpg": ["car", "dog", "bicycle"],
        "image_004.jpg": ["bench", "bicycle", "apple"],
        "image_005.jpg": ["dog", "bench", "bicycle"],
    }
    for image, negatives in expected.items():
        assert [name for name, label in _objects(questions, image) if label == "no"] == negatives


def test_build_adversarial_negatives():
    questions = build_pope(FIXTURES / "instances.json", strategy="adversarial", n_images=5, seed=3)
    assert [name for name, label in _objects(questions, "image_001.jpg") if label == "no"] == ["umbrella", "bench", "apple"]
    assert [name for name, label in _objects(questions, "image_003.jpg") if label == "no"] == ["car", "dog", "bicycle"]


def test_build_article_before_vowel():
    questions = build_pope(FIXTURES / "instances.json", strategy="popular", n_images=5, seed=0)
    texts = {q["text"] for q in questions}
    assert "Is there an apple in the image?" in texts
    assert "Is there an umbrella in the image?" in texts
    assert "Is there a dog in the image?" in texts


def test_build_seed_reproducible():
    first = build_pope(FIXTURES / "instances.json", strategy="random", n_images=3, seed=7)
    second = build_pope(FIXTURES / "instances.json", strategy="random", n_images=3, seed=7)
    assert first == second


def test_build_random_reaches_rare_category():
    texts = {q["text"] for seed in range(30) for q in build_pope(FIXTURES / "instances.json", strategy="random", n_images=5, seed=seed)}
    assert "Is there an orange in the image?" in texts


def test_build_too_many_images():
    with pytest.raises(ValueError, match="only 5 of 7 images"):
        build_pope(FIXTURES / "instances.json", strategy="random", n_images=6, seed=0)


def test_build_unknown_strategy():
    with pytest.raises(ValueError, match="random, popular, adversarial"):
        build_pope(FIXTURES / "instances.json", strategy="hard", n_images=1, seed=0)


def test_build_accepts_coco_object():
    coco = load_coco_instances(FIXTURES / "instances.json")
    assert build_pope(coco, strategy="popular", n_images=2, seed=1) == build_pope(FIXTURES / "instances.json", strategy="popular", n_images=2, seed=1)


def test_write_questions_round_trip(tmp_path):
    questions = build_pope(FIXTURES / "instances.json", strategy="adversarial", n_images=2, seed=0)
    path = write_pope_questions(questions, tmp_path / "coco_pope_adversarial.json")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == questions
    assert list(lines[0]) == ["question_id", "image", "text", "label"]
    assert [p.name for p in tmp_path.iterdir()] == ["coco_pope_adversarial.json"]
    assert len(read_pope_questions(path)) == 12


def test_write_questions_missing_key(tmp_path):
    with pytest.raises(ValueError, match="question 1 lacks label"):
        write_pope_questions([{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?"}], tmp_path / "q.json")


def test_build_real_coco_annotations(realfile, tmp_path):
    annotations = json.loads(realfile("HALC/transformers-4.36.2/tests/fixtures/tests_samples/COCO/coco_annotations.txt").read_text())
    categories = {1: "person", 17: "cat", 18: "dog", 44: "bottle", 62: "chair", 63: "couch", 65: "bed", 75: "remote"}
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": [{"id": 39769, "file_name": "COCO_val2014_000000039769.jpg", "width": 640, "height": 480}],
        "annotations": annotations,
        "categories": [{"id": key, "name": name} for key, name in categories.items()],
    }))
    questions = build_pope(instances, strategy="popular", n_images=1, seed=0)
    assert [q["text"] for q in questions] == [
        "Is there a remote in the image?", "Is there a person in the image?",
        "Is there a couch in the image?", "Is there a dog in the image?",
        "Is there a bed in the image?", "Is there a bottle in the image?",
    ]
    assert {q["image"] for q in questions} == {"COCO_val2014_000000039769.jpg"}


def test_build_mmdetection_sample(realfile):
    path = realfile("mmdetection/tests/data/coco_sample.json")
    coco = load_coco_instances(path)
    assert len(coco.imgs) == 3
    assert coco.imgToAnns.get(2, []) == []
    with pytest.raises(ValueError, match="only 0 of 3 images"):
        build_pope(path, strategy="random", n_images=1, seed=0)


# Parity with what the official tools printed for real model outputs.


def _counts(metrics):
    return (metrics.tp, metrics.fp, metrics.tn, metrics.fn)


def _llava_question_files(realfile):
    return [
        realfile(f"{LLAVA_POPE}/coco/coco_pope_adversarial.json"),
        realfile(f"{LLAVA_POPE}/coco/coco_pope_random.json"),
        realfile(f"{LLAVA_POPE}/coco/coco_pope_popular.json"),
        realfile(f"{LLAVA_POPE}/llava_pope_test.jsonl"),
    ]


def test_real_llava13b_counts(realfile):
    report = score_pope_files(_llava_question_files(realfile), realfile(f"{LLAVA_POPE}/answers/llava-v1.5-13b.jsonl"))
    assert _counts(report.splits["adversarial"]) == (1182, 117, 1383, 318)
    assert _counts(report.splits["random"]) == (1182, 31, 1379, 318)
    assert _counts(report.splits["popular"]) == (1182, 59, 1441, 318)
    assert round(100 * report.mean_f1, 2) == 85.95
    assert report.missing_splits == []


def _parse_pope_results(text):
    """Read each split's counts and rates from the output of LLaVA's POPE script.

    In that output each split's metrics come right before its "Category: NAME" line, and
    "====" lines separate the splits.
    """
    results = {}
    for block in re.split(r"={4,}", text):
        category = re.search(r"Category: (\w+)", block)
        counts = re.search(r"TP\tFP\tTN\tFN\t\n(\d+)\t(\d+)\t(\d+)\t(\d+)", block)
        rates = re.findall(r"(Accuracy|Precision|Recall|F1 score|Yes ratio): ([0-9.]+)", block)
        results[category.group(1)] = (
            tuple(int(value) for value in counts.groups()) if counts else None,
            {key: float(value) for key, value in rates},
        )
    return results


def test_real_llava7b_matches_printed(realfile):
    printed = _parse_pope_results(realfile("VLM-Benchmarks/playground/data/eval/POPE_results.txt").read_text())
    report = score_pope_files(_llava_question_files(realfile), realfile(f"{LLAVA_POPE}/answers/llava-v1.5-7b.jsonl"))
    for split in ("adversarial", "random"):
        counts, rates = printed[split]
        metrics = report.splits[split]
        assert _counts(metrics) == counts
        assert metrics.accuracy == pytest.approx(rates["Accuracy"], abs=1e-12)
        assert metrics.precision == pytest.approx(rates["Precision"], abs=1e-12)
        assert metrics.recall == pytest.approx(rates["Recall"], abs=1e-12)
        assert metrics.f1 == pytest.approx(rates["F1 score"], abs=1e-12)
        assert metrics.yes_ratio == pytest.approx(rates["Yes ratio"], abs=1e-12)
    assert printed["popular"][0] is None


def test_real_llava7b_popular_missing(realfile):
    report = score_pope_files(_llava_question_files(realfile), realfile(f"{LLAVA_POPE}/answers/llava-v1.5-7b.jsonl"))
    assert report.missing_splits == ["popular"]
    assert "popular" not in report.splits
    assert report.missing_answers == {"random": 198}
    assert report.splits["random"].n == 2712
    assert report.mean_f1 is None


def test_real_current_release_mismatch(realfile):
    files = [realfile("POPE/output/coco/coco_pope_random.json")] + _llava_question_files(realfile)[0:1] + _llava_question_files(realfile)[2:]
    with pytest.raises(ValueError, match="has no label in split 'random'"):
        score_pope_files(files, realfile(f"{LLAVA_POPE}/answers/llava-v1.5-13b.jsonl"))


@pytest.mark.parametrize("dataset", ["aokvqa", "gqa"])
def test_real_seem_duplicate_scored(realfile, tmp_path, dataset):
    paths = [realfile(f"POPE/output/seem/{dataset}/{dataset}_pope_seem_{split}.json") for split in ("random", "popular", "adversarial")]
    questions = [question for path in paths for question in read_pope_questions(path)]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question": q.text, "answer": "Yes"}) + "\n" for q in questions))
    report = score_pope_files(paths, answers)
    assert report.duplicate_questions == {"adversarial": 1}
    assert report.splits["adversarial"].n == 3000
    assert _counts(report.splits["adversarial"]) == (1500, 1500, 0, 0)
    assert report.splits["random"].yes_ratio == 1.0


def test_real_official_example_count(realfile):
    with pytest.raises(ValueError, match="1 answer records but the question files contain 3000 questions"):
        score_pope_files([realfile("POPE/output/coco/coco_pope_popular.json")], realfile("POPE/answer/example.json"))


def test_real_crlf_release_reads(realfile):
    questions = read_pope_questions(realfile("POPE/history_28f884a/output/coco/coco_pope_random.json"))
    assert len(questions) == 2910
    assert sum(q.label == "yes" for q in questions) == 1500
    assert sum("imange" in q.text for q in questions) == 144
    assert {q.split for q in questions} == {"random"}


def test_files_prompt_mismatch_warned(tmp_path, caplog):
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "prompt": "Is there a horse in the image?", "text": "Yes"}) + "\n")
    report = score_pope_files([FIXTURES / "coco_pope_adversarial.json"], answers)
    assert report.splits["adversarial"].n == 1
    assert "1 answers carry a prompt that differs" in caplog.text
