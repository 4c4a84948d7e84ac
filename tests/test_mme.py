"""MME: the answer rule, subtask scores, the two file layouts, and parity with real outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halluc_bench.tasks.mme import (
    COGNITION_SUBTASKS,
    MME_SUBTASKS,
    PERCEPTION_SUBTASKS,
    MmeRecord,
    load_mme_key_dir,
    load_mme_llava_answers,
    load_mme_results_dir,
    parse_mme_answer,
    score_mme,
)

FIXTURES = Path(__file__).parent / "fixtures" / "mme"
KEY_2374 = "RITUAL/experiments/eval/eval_mme/Your_Results"
LLAVA_MME = "VLM-Benchmarks/playground/data/eval/MME"

ANSWER_TABLE = [
    ("Yes", "yes"),
    ("No", "no"),
    ("yes.", "yes"),
    ("No, it is not.", "no"),
    ("YES", "yes"),
    ("Church", "other"),
    ("", "other"),
    ("None", "no"),  # "none" has "no" in its first 4 characters
    ("nope", "no"),
    ("I don't know", "other"),
    ("The answer is yes", "other"),  # "yes" is not within the first 4 characters
    (" yes", "yes"),
    ("  yes", "other"),
    ("yesno", "yes"),
    ("noyes", "no"),
]


@pytest.mark.parametrize(("answer", "expected"), ANSWER_TABLE)
def test_parse_answer_table(answer, expected):
    assert parse_mme_answer(answer) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_answer_fuzz(text):
    assert parse_mme_answer(text) in ("yes", "no", "other")


def test_subtask_lists():
    assert len(MME_SUBTASKS) == 14
    assert len(PERCEPTION_SUBTASKS) == 10
    assert COGNITION_SUBTASKS == ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def test_results_dir_fixture_scores():
    report = score_mme(load_mme_results_dir(FIXTURES / "results"))
    existence = report.subtasks["existence"]
    code = report.subtasks["code_reasoning"]
    assert existence.acc == 0.75
    assert existence.acc_plus == 0.5
    assert existence.score == 125.0
    assert existence.other == 1
    assert code.score == 100.0
    assert report.perception == 125.0
    assert report.cognition == 100.0
    assert len(report.missing_subtasks) == 12


def test_llava_fixture_matches_results_dir():
    from_llava = score_mme(load_mme_llava_answers(FIXTURES / "answers_llava.jsonl", FIXTURES / "key"))
    from_tool = score_mme(load_mme_results_dir(FIXTURES / "results"))
    assert from_llava.to_dict() == from_tool.to_dict()


def test_llava_records_in_key_order():
    records = load_mme_llava_answers(FIXTURES / "answers_llava.jsonl", FIXTURES / "key")
    assert [record.image for record in records[:4]] == ["a.jpg", "a.jpg", "b.jpg", "b.jpg"]
    assert records[1].answer == "No"


def test_llava_missing_answer_counts(tmp_path):
    lines = (FIXTURES / "answers_llava.jsonl").read_text().splitlines()
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(lines[1:]) + "\n" + json.dumps({"question_id": "existence/z.jpg", "prompt": "Is there a fox?", "text": "No"}) + "\n")
    with pytest.raises(ValueError, match="1 key questions have no answer and 1 answers match no key question"):
        load_mme_llava_answers(answers, FIXTURES / "key")


def test_llava_duplicate_answer(tmp_path):
    lines = (FIXTURES / "answers_llava.jsonl").read_text().splitlines()
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ValueError, match="second answer"):
        load_mme_llava_answers(answers, FIXTURES / "key")


def test_constant_yes_fixture():
    records = [MmeRecord(r.subtask, r.image, r.question, r.label, "Yes") for r in load_mme_key_dir(FIXTURES / "key")]
    report = score_mme(records)
    assert report.subtasks["existence"].score == 50.0
    assert report.subtasks["code_reasoning"].score == 50.0


def test_score_accepts_mappings():
    records = [
        {"subtask": "count", "image": "x.jpg", "question": "Are there two dogs?", "label": "Yes", "answer": "Yes"},
        {"subtask": "count", "image": "x.jpg", "question": "Are there three dogs?", "label": "No", "answer": "Yes"},
    ]
    score = score_mme(records).subtasks["count"]
    assert score.acc == 0.5
    assert score.acc_plus == 0.0
    assert score.score == 50.0


def test_score_pairs_by_image_not_adjacency():
    records = [
        MmeRecord("color", "a.jpg", "q1", "yes", "Yes"),
        MmeRecord("color", "b.jpg", "q1", "yes", "Yes"),
        MmeRecord("color", "a.jpg", "q2", "no", "No"),
        MmeRecord("color", "b.jpg", "q2", "no", "Yes"),
    ]
    assert score_mme(records).subtasks["color"].acc_plus == 0.5


def test_image_with_one_question(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", results)
    lines = (results / "existence.txt").read_text().splitlines()
    (results / "existence.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"image 'd.jpg' in subtask 'existence' has 1 questions"):
        score_mme(load_mme_results_dir(results))


def test_results_line_without_answer(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "count.txt").write_text("a.jpg\tAre there two dogs?\tYes\n")
    with pytest.raises(ValueError, match=r"count.txt:1: expected tab-separated"):
        load_mme_results_dir(results)


def test_results_invalid_label(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "count.txt").write_text("a.jpg\tAre there two dogs?\tMaybe\tYes\n")
    with pytest.raises(ValueError, match="third column must be Yes or No"):
        load_mme_results_dir(results)


def test_results_unknown_subtask_file(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(FIXTURES / "results", results)
    (results / "colour.txt").write_text("")
    with pytest.raises(ValueError, match="colour.txt is not an MME subtask file; valid names are existence.txt"):
        load_mme_results_dir(results)


def test_results_crlf_and_tab_in_answer(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "OCR.txt").write_bytes(b"a.jpg\tIs the word ok?\tYes\tYes\tit is\r\na.jpg\tIs the word no?\tNo\tNo\r\n")
    records = load_mme_results_dir(results)
    assert records[0].answer == "Yes\tit is"
    assert records[1].answer == "No"
    assert score_mme(records).subtasks["OCR"].score == 200.0


def test_results_dir_missing():
    with pytest.raises(FileNotFoundError, match="MME folder not found"):
        load_mme_results_dir(FIXTURES / "absent")


# Parity with what the official tool printed for real model outputs.


def test_real_llava13b_totals(realfile):
    records = load_mme_llava_answers(realfile(f"{LLAVA_MME}/answers/llava-v1.5-13b.jsonl"), realfile(KEY_2374))
    report = score_mme(records)
    assert len(records) == 2374
    assert round(report.perception, 2) == 1531.32
    assert round(report.cognition, 2) == 295.36
    assert report.subtasks["artwork"].other == 11


def _parse_mme_results(text):
    """Read the subtask scores and totals printed by the official MME tool."""
    scores = {name: float(value) for name, value in re.findall(r"\t(\w+) score: ([0-9.]+)", text)}
    totals = [float(value) for value in re.findall(r"total score: ([0-9.]+)", text)]
    return scores, totals


def test_real_llava7b_folder_matches_printed(realfile):
    printed_scores, (perception, cognition) = _parse_mme_results(realfile("VLM-Benchmarks/playground/data/eval/MME_results.txt").read_text())
    report = score_mme(load_mme_results_dir(realfile(f"{LLAVA_MME}/eval_tool/answers/llava-v1.5-7b")))
    assert len(printed_scores) == 14
    for name, value in printed_scores.items():
        assert report.subtasks[name].score == pytest.approx(value, abs=1e-9)
    assert report.perception == pytest.approx(perception, abs=1e-9)
    assert report.cognition == pytest.approx(cognition, abs=1e-9)
    assert round(report.perception, 2) == 1508.67
    assert round(report.cognition, 2) == 355.71


def _key_lines(records):
    return {(record.subtask, os.path.splitext(record.image)[0], record.question, record.label) for record in records}


def test_real_llava7b_folder_key(realfile):
    folder = _key_lines(load_mme_results_dir(realfile(f"{LLAVA_MME}/eval_tool/answers/llava-v1.5-7b")))
    key_2374 = _key_lines(load_mme_key_dir(realfile(KEY_2374)))
    key_2370 = _key_lines(load_mme_key_dir(realfile(f"{LLAVA_MME}/eval_tool/Your_Results")))
    assert len(folder) == 2350
    assert folder <= key_2374
    assert len(folder - key_2370) == 2


def test_real_constant_yes(realfile):
    records = [MmeRecord(r.subtask, r.image, r.question, r.label, "Yes") for r in load_mme_key_dir(realfile(KEY_2374))]
    report = score_mme(records)
    assert {name: score.score for name, score in report.subtasks.items()} == {name: 50.0 for name in MME_SUBTASKS}
    assert report.perception == 500.0
    assert report.cognition == 200.0


@pytest.mark.parametrize("folder", [f"{LLAVA_MME}/eval_tool/LaVIN", "RITUAL/experiments/eval/eval_mme/LaVIN"])
def test_real_lavin_example_scores(realfile, folder):
    report = score_mme(load_mme_results_dir(realfile(folder)))
    assert report.missing_subtasks == []
    assert 0 < report.perception < 2000
    assert 0 < report.cognition < 800


def test_real_llava7b_answers_incomplete(realfile):
    with pytest.raises(ValueError, match="6 key questions have no answer and 0 answers match no key question"):
        load_mme_llava_answers(realfile(f"{LLAVA_MME}/answers/llava-v1.5-7b.jsonl"), realfile(KEY_2374))


def test_real_llava13b_wrong_key(realfile):
    with pytest.raises(ValueError, match="0 key questions have no answer and 4 answers match no key question"):
        load_mme_llava_answers(realfile(f"{LLAVA_MME}/answers/llava-v1.5-13b.jsonl"), realfile(f"{LLAVA_MME}/eval_tool/Your_Results"))
