"""The ``halluc-bench score chair`` command: CHAIR of a caption file against COCO ground truth."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

from halluc_bench.tasks.chair import ChairEvaluator, ChairReport, load_synonyms
from halluc_bench.tasks.chair_text import CHAIR_LEMMATIZERS, validate_lemmatizer
from halluc_bench.tasks.io import read_records, write_jsonl_atomic

logger = logging.getLogger(__name__)

EXIT_INPUT_ERROR = 2
# Errors that mean the input files or options are wrong, not that the program is broken.
# ImportError covers a missing tagger package, which reinstalling fixes.
_INPUT_ERRORS = (ValueError, KeyError, OSError, ImportError)


def add_chair_parser(score_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``chair`` subcommand to the subcommands of ``halluc-bench score``."""
    lemmatizers = ", ".join(CHAIR_LEMMATIZERS.names())

    chair = score_subparsers.add_parser(
        "chair",
        help="score image captions for object hallucination (CHAIR_s, CHAIR_i, recall, and len: mean tokens per caption / 100)",
        description=(
            "Score captions with CHAIR: object mentions are matched, through the COCO synonym list, against "
            "each image's annotated objects and the objects of its reference captions."
        ),
    )
    chair.add_argument(
        "--captions", required=True, metavar="FILE",
        help="captions as {image_id, caption} records: JSON Lines, a JSON array, or JSON objects one after another",
    )

    truth = chair.add_mutually_exclusive_group(required=True)
    truth.add_argument("--gt-objects", metavar="FILE", help="ground truth as a JSON object {image_id: [COCO object names]}")
    truth.add_argument(
        "--coco-annotations", metavar="DIR",
        help="folder of COCO annotation files: instances_*.json and captions_*.json (all of them are merged)",
    )

    chair.add_argument(
        "--synonyms", metavar="FILE",
        help="synonym list, one object per line, canonical name first (default: the original CHAIR list)",
    )
    chair.add_argument(
        "--lemmatizer", default="wordnet", metavar="NAME",
        help=f"word normalization, one of: {lemmatizers}. 'wordnet' tags parts of speech and lemmatizes with "
        f"WordNet (the variant most papers report); 'pattern' singularizes every word (the original CHAIR "
        f"code) (default: wordnet)",
    )
    chair.add_argument("--per-caption", metavar="OUT", help="also write one JSON record per caption to OUT (JSON Lines)")
    chair.add_argument("--json", action="store_true", help="print one JSON object (fractions, not percent) instead of a table")

    chair.set_defaults(handler=run_score_chair)
    return chair


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
def run_score_chair(args: argparse.Namespace) -> int:
    """Score a caption file with CHAIR and print the report."""
    lemmatizer = validate_lemmatizer(args.lemmatizer)
    synonyms = load_synonyms(args.synonyms)
    captions = read_caption_records(args.captions)
    if args.gt_objects is not None:
        evaluator = ChairEvaluator.from_gt_json(args.gt_objects, synonyms=synonyms, lemmatizer=lemmatizer)
    else:
        evaluator = ChairEvaluator.from_coco_dir(args.coco_annotations, synonyms=synonyms, lemmatizer=lemmatizer)
    report = evaluator.score(captions)
    if args.per_caption:
        path = write_jsonl_atomic((score.to_dict() for score in report.per_caption), args.per_caption)
        logger.info("wrote %d per-caption records to %s", report.n, path)
    if args.json:
        print(json.dumps(report.summary(), indent=2))
    else:
        print(format_chair_table(report))
    return 0


def read_caption_records(path: str | os.PathLike[str]) -> list[tuple[int | str, str]]:
    """Read ``(image_id, caption)`` pairs from a record file; a record without either field is an error."""
    pairs: list[tuple[int | str, str]] = []
    for number, record in enumerate(read_records(path), start=1):
        missing = [key for key in ("image_id", "caption") if key not in record]
        if missing:
            found = ", ".join(sorted(record)) or "none"
            raise ValueError(f"{path}: record {number} lacks {' and '.join(missing)} (fields found: {found})")
        caption: Any = record["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"{path}: record {number} has a caption of type {type(caption).__name__}; expected text")
        image_id = record["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise ValueError(f"{path}: record {number} has image_id {image_id!r}; expected an integer or numeric string")
        pairs.append((image_id, caption))
    return pairs


def format_chair_table(report: ChairReport) -> str:
    """Render the overall CHAIR metrics as a small table; rates in percent."""
    hallucinating = sum(score.hallucinated for score in report.per_caption)
    lines = [
        f"CHAIR ({report.n} captions, lemmatizer: {report.lemmatizer})",
        f"CHAIR_s  {100 * report.chair_s:6.2f} %  ({hallucinating} of {report.n} captions mention a hallucinated object)",
        f"CHAIR_i  {100 * report.chair_i:6.2f} %  "
        f"({report.hallucinated_mentions} of {report.mentions} object mentions are hallucinated)",
        f"recall   {100 * report.recall:6.2f} %  (ground-truth objects mentioned)",
        f"len      {report.len:8.4f}  (mean tokens per caption / 100)",
    ]
    return "\n".join(lines)
