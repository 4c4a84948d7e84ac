"""The ``halluc-bench score`` command, run in-process, against the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from halluc_bench.cli import main
from halluc_bench.tasks.mme import load_mme_llava_answers, load_mme_results_dir, score_mme
from halluc_bench.tasks.pope import score_pope_files
from halluc_bench.tasks.score_cli import add_score_command

FIXTURES = Path(__file__).parent / "fixtures"
LLAVA_POPE = "VLM-Benchmarks/playground/data/eval/pope"
LLAVA_MME = "VLM-Benchmarks/playground/data/eval/MME"


def _run_json(capsys, argv):
    exit_code = main(argv)
    captured = capsys.readouterr()
    assert exit_code == 0, captured.err
    return json.loads(captured.out)


def _pope_files(realfile):
    names = ["coco/coco_pope_adversarial.json", "coco/coco_pope_random.json", "coco/coco_pope_popular.json", "llava_pope_test.jsonl"]
    return [str(realfile(f"{LLAVA_POPE}/{name}")) for name in names]


def test_pope_real_matches_api(capsys, realfile):
    questions = _pope_files(realfile)
    answers = str(realfile(f"{LLAVA_POPE}/answers/llava-v1.5-13b.jsonl"))
    output = _run_json(capsys, ["score", "pope", "--questions", *questions, "--answers", answers, "--json"])
    assert output == score_pope_files(questions, answers).to_dict()
    assert round(100 * output["mean_f1"], 2) == 85.95
    assert output["splits"]["popular"]["tp"] == 1182


def test_pope_real_incomplete(capsys, realfile):
    answers = str(realfile(f"{LLAVA_POPE}/answers/llava-v1.5-7b.jsonl"))
    output = _run_json(capsys, ["score", "pope", "--questions", *_pope_files(realfile), "--answers", answers, "--json"])
    assert output["missing_splits"] == ["popular"]
    assert output["mean_f1"] is None
    assert output["splits"]["random"]["n"] == 2712


def test_pope_real_table(capsys, realfile):
    answers = str(realfile(f"{LLAVA_POPE}/answers/llava-v1.5-13b.jsonl"))
    assert main(["score", "pope", "--questions", *_pope_files(realfile), "--answers", answers]) == 0
    table = capsys.readouterr().out
    assert "mean F1 %: 85.95" in table
    assert table.splitlines()[1].split()[:6] == ["adversarial", "3000", "1182", "117", "1383", "318"]


def test_pope_strict_parser_option(capsys):
    questions = [str(FIXTURES / "pope" / name) for name in ("coco_pope_random.json", "coco_pope_adversarial.json", "merged_questions.jsonl")]
    answers = str(FIXTURES / "pope" / "answers_llava.jsonl")
    output = _run_json(capsys, ["score", "pope", "--questions", *questions, "--answers", answers, "--parser", "strict", "--json"])
    assert output == score_pope_files(questions, answers, parser="strict").to_dict()
    assert output["splits"]["random"]["unknown"] == 2


def test_mme_real_llava_matches_api(capsys, realfile):
    answers = str(realfile(f"{LLAVA_MME}/answers/llava-v1.5-13b.jsonl"))
    key = str(realfile("RITUAL/experiments/eval/eval_mme/Your_Results"))
    output = _run_json(capsys, ["score", "mme", "--answers", answers, "--gt-dir", key, "--json"])
    assert output == score_mme(load_mme_llava_answers(answers, key)).to_dict()
    assert round(output["perception"], 2) == 1531.32
    assert round(output["cognition"], 2) == 295.36


def test_mme_real_results_dir(capsys, realfile):
    folder = str(realfile(f"{LLAVA_MME}/eval_tool/answers/llava-v1.5-7b"))
    output = _run_json(capsys, ["score", "mme", "--results-dir", folder, "--json"])
    assert output == score_mme(load_mme_results_dir(folder)).to_dict()
    assert main(["score", "mme", "--results-dir", folder]) == 0
    table = capsys.readouterr().out
    assert "perception: 1508.67 / 2000" in table
    assert "cognition:  355.71 / 800" in table
    assert "other: answers without" in table


def test_mme_json_keys(capsys):
    output = _run_json(capsys, ["score", "mme", "--results-dir", str(FIXTURES / "mme" / "results"), "--json"])
    assert set(output["subtasks"]["existence"]) >= {"acc", "acc_plus", "score", "n"}
    assert output["perception"] == 125.0
    assert output["cognition"] == 100.0


def _assert_one_error_line(capsys, argv, fragment):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert lines[-1].startswith("halluc-bench: error: ")
    assert fragment in lines[-1]


def test_error_missing_answers_file(capsys, tmp_path):
    questions = str(FIXTURES / "pope" / "coco_pope_random.json")
    missing = str(tmp_path / "none.jsonl")
    _assert_one_error_line(capsys, ["score", "pope", "--questions", questions, "--answers", missing], f"file not found: {missing}")
    _assert_one_error_line(capsys, ["score", "pope", "--questions", questions, "--answers", missing], "check the path")


def test_error_answers_without_gt_dir(capsys):
    _assert_one_error_line(capsys, ["score", "mme", "--answers", str(FIXTURES / "mme" / "answers_llava.jsonl")], "--answers needs --gt-dir")


def test_error_count_mismatch(capsys):
    argv = ["score", "pope", "--questions", str(FIXTURES / "pope" / "coco_pope_adversarial.json"), "--answers", str(FIXTURES / "pope" / "answers_official_random.json")]
    _assert_one_error_line(capsys, argv, "6 answer records but the question files contain 4 questions")


def test_error_unknown_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "pope", "--questions", "q.json", "--answers", "a.json", "--parser", "lenient"])
    assert exit_info.value.code == 2
    assert "official" in capsys.readouterr().err


def _subparser_actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield child
                yield from _subparser_actions(child)


def test_every_option_has_help():
    parser = argparse.ArgumentParser(prog="halluc-bench")
    add_score_command(parser.add_subparsers(dest="command"))
    checked = 0
    for subparser in _subparser_actions(parser):
        for action in subparser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{subparser.prog} {action.option_strings[0]} has no help text"
                checked += 1
    assert checked >= 8


def test_score_without_chair_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "halluc_bench.tasks.chair_cli", None)
    parser = argparse.ArgumentParser(prog="halluc-bench")
    add_score_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["score", "mme", "--results-dir", "x"])
    assert args.benchmark == "mme"
