"""The ``halluc-bench score`` command: score existing model outputs with the official rules.

Each benchmark is a sub-subcommand (``score pope``, ``score mme``, and ``score chair`` when
``halluc_bench.tasks.chair_cli`` is installed). Every sub-subcommand sets ``handler`` in its
parsed arguments to a function that takes the arguments, prints the result on stdout and
returns the process exit code: 0 on success, 2 on invalid input, after printing one line
``halluc-bench: error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable

from halluc_bench.tasks.mme import MME_CATEGORIES, MmeReport, load_mme_llava_answers, load_mme_results_dir, score_mme
from halluc_bench.tasks.pope import POPE_PARSERS, PopeReport, score_pope_files

logger = logging.getLogger(__name__)

EXIT_INPUT_ERROR = 2
# Errors that mean the input files or options are wrong, not that the program is broken.
_INPUT_ERRORS = (ValueError, KeyError, OSError)


def add_score_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``score`` subcommand with its ``pope`` and ``mme`` (and, if installed, ``chair``) subcommands."""
    score = subparsers.add_parser(
        "score",
        help="score existing model outputs on POPE, MME or CHAIR",
        description="Score answer or caption files that a model already produced, with the official metric rules.",
    )
    score_subparsers = score.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_pope_parser(score_subparsers)
    _add_mme_parser(score_subparsers)
    try:
        from halluc_bench.tasks.chair_cli import add_chair_parser
    except ModuleNotFoundError as error:
        if error.name != "halluc_bench.tasks.chair_cli":
            raise
        logger.debug("halluc_bench.tasks.chair_cli is not installed; 'score chair' is unavailable")
    else:
        add_chair_parser(score_subparsers)
    return score


def _add_pope_parser(subparsers: argparse._SubParsersAction) -> None:
    pope = subparsers.add_parser(
        "pope",
        help="score POPE yes/no answers per split (random, popular, adversarial)",
        description="Score POPE answers. Metrics are per split; the POPE number is the mean F1 over the splits.",
    )
    pope.add_argument(
        "--questions", nargs="+", required=True, metavar="FILE",
        help="POPE question files: one label file per split ({question_id, image, text, label}; split from the "
        "'category' field or the file name), optionally plus LLaVA's merged question file, whose questions take "
        "their labels from the label files",
    )
    pope.add_argument(
        "--answers", required=True, metavar="FILE",
        help="model answers: {question_id, text} records paired by question id, or {question, answer} records "
        "paired with the questions by position",
    )
    pope.add_argument(
        "--parser", choices=POPE_PARSERS.names(), default="official",
        help="answer parser: 'official' (the POPE rule; a reply without No/no/not is yes) or 'strict' "
        "(hedges, refusals and empty replies are unknown and left out of the counts) (default: official)",
    )
    pope.add_argument("--json", action="store_true", help="print one JSON object (rates as fractions) instead of a table")
    pope.set_defaults(handler=run_score_pope)


def _add_mme_parser(subparsers: argparse._SubParsersAction) -> None:
    mme = subparsers.add_parser(
        "mme",
        help="score MME answers per subtask with perception and cognition totals",
        description="Score MME answers with the official eval-tool rules (subtask score 0-200 = 100 * (acc + acc+)).",
    )
    source = mme.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--results-dir", metavar="DIR",
        help="eval-tool results folder: SUBTASK.txt files of 'image<TAB>question<TAB>Yes|No<TAB>answer' lines",
    )
    source.add_argument(
        "--answers", metavar="FILE",
        help="LLaVA answers JSONL ({question_id: 'subtask/image', prompt, text}); needs --gt-dir",
    )
    mme.add_argument(
        "--gt-dir", metavar="DIR",
        help="eval-tool answer key folder (SUBTASK.txt files of 'image<TAB>question<TAB>Yes|No' lines) for --answers",
    )
    mme.add_argument("--json", action="store_true", help="print one JSON object (acc and acc+ as fractions) instead of a table")
    mme.set_defaults(handler=run_score_mme)


def _report_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn an input error into one ``halluc-bench: error:`` line on stderr and exit code 2."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _INPUT_ERRORS as error:
            message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
            print(f"halluc-bench: error: {' '.join(message.split())}", file=sys.stderr)
            return EXIT_INPUT_ERROR

    handler.__name__ = run.__name__
    handler.__doc__ = run.__doc__
    return handler


@_report_errors
def run_score_pope(args: argparse.Namespace) -> int:
    """Score POPE answers and print the report."""
    report = score_pope_files(args.questions, args.answers, parser=args.parser)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(format_pope_table(report))
    return 0


@_report_errors
def run_score_mme(args: argparse.Namespace) -> int:
    """Score MME answers and print the report."""
    if args.answers is not None and args.gt_dir is None:
        raise ValueError("--answers needs --gt-dir, the eval-tool answer key folder the answers are paired with")
    if args.results_dir is not None and args.gt_dir is not None:
        raise ValueError("--gt-dir applies only to --answers; a results folder already contains the labels")
    if args.results_dir is not None:
        records = load_mme_results_dir(args.results_dir)
    else:
        records = load_mme_llava_answers(args.answers, args.gt_dir)
    report = score_mme(records)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(format_mme_table(report))
    return 0


def _print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False))


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def format_pope_table(report: PopeReport) -> str:
    """Render a POPE report as an aligned table; rates in percent."""
    header = ("split", "n", "TP", "FP", "TN", "FN", "acc %", "prec %", "recall %", "F1 %", "yes %", "unknown", "unknown %")
    rows = [header]
    for name, m in report.splits.items():
        rows.append((name, str(m.n), str(m.tp), str(m.fp), str(m.tn), str(m.fn), _percent(m.accuracy), _percent(m.precision),
                     _percent(m.recall), _percent(m.f1), _percent(m.yes_ratio), str(m.unknown), _percent(m.unknown_rate)))
    lines = _align(rows)
    lines.append("")
    mean = report.mean_f1
    lines.append(f"mean F1 %: {_percent(mean) if mean is not None else 'n/a (a split has no answers)'}  (parser: {report.parser})")
    if report.missing_splits:
        lines.append(f"splits without answers: {', '.join(report.missing_splits)}")
    for split, count in report.missing_answers.items():
        lines.append(f"split {split}: {count} questions have no answer and are not scored")
    for split, count in report.duplicate_questions.items():
        lines.append(f"split {split}: {count} questions repeat an earlier question (same image and text); each is scored")
    return "\n".join(lines)


def format_mme_table(report: MmeReport) -> str:
    """Render an MME report as an aligned table; acc and acc+ in percent, scores on the 0-200 subtask scale."""
    rows = [("subtask", "category", "n", "acc %", "acc+ %", "score", "other")]
    category_of = {name: category for category, names in MME_CATEGORIES.items() for name in names}
    for name, s in report.subtasks.items():
        rows.append((name, category_of.get(name, "-"), str(s.n), _percent(s.acc), _percent(s.acc_plus), f"{s.score:.2f}", str(s.other)))
    lines = _align(rows)
    lines.append("")
    lines.append(f"perception: {report.perception:.2f} / 2000")
    lines.append(f"cognition:  {report.cognition:.2f} / 800")
    lines.append("other: answers without \"yes\" or \"no\" in their first 4 characters; they count as wrong")
    if report.missing_subtasks:
        lines.append(f"subtasks without questions (not in the totals): {', '.join(report.missing_subtasks)}")
    return "\n".join(lines)


def _align(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return lines
