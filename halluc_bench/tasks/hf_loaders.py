"""Read local copies of the Hugging Face POPE and MME datasets that evaluation harnesses use.

Layouts (as published on the Hub and used by lmms-eval):

- ``lmms-lab/POPE``: Parquet files with the columns ``question_id``, ``question``, ``answer``
  (yes/no), ``image_source`` (the COCO image name), ``category`` (random, popular or
  adversarial) and ``image``. The default configuration keeps every split in ``data/test-*``,
  and the ``Full`` configuration keeps one file group per split in ``Full/``.
- ``lmms-lab/MME``: Parquet files ``data/test-*`` with the columns ``question_id``
  (``subtask/image file``, shared by the two questions of an image), ``image``, ``question``,
  ``answer`` (Yes/No) and ``category`` (the subtask).

These loaders read local files only and never resolve a Hub id or download anything. They
return the records that ``score_pope`` and ``score_mme`` take.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset

from halluc_bench.tasks.mme import MmeRecord
from halluc_bench.tasks.pope import PopeReport, score_pope
from halluc_bench.tasks.pope_files import PopeQuestion, count_duplicate_questions, split_name_from_path

logger = logging.getLogger(__name__)

POPE_COLUMNS = ("question_id", "question", "answer", "image_source")  # plus "category" when present
MME_COLUMNS = ("question_id", "question", "answer", "category")
PathLike = str | os.PathLike[str]


def parquet_files(location: PathLike) -> list[Path]:
    """Return the Parquet files of a local dataset copy, in name order.

    LOCATION is a ``.parquet`` file, a folder that contains ``.parquet`` files, or a
    downloaded dataset folder whose files are in ``data/``. Pass ``DIR/Full`` to read the
    Full configuration of POPE.
    """
    path = Path(location).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: not found; pass a local folder of Parquet files (for example a downloaded copy of "
            "lmms-lab/POPE or lmms-lab/MME), because this loader never downloads from the Hugging Face Hub"
        )
    if path.is_file():
        return [path]
    for folder in (path, path / "data"):
        files = sorted(folder.glob("*.parquet"))
        if files:
            return files
    found = ", ".join(sorted(entry.name for entry in path.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(f"{path}: no .parquet files in it or in its data/ folder (found {found})")


def read_parquet_columns(path: Path, required: Sequence[str], optional: Sequence[str] = (),
                         cache_dir: PathLike | None = None) -> Dataset:
    """Read the named columns of one Parquet file with ``datasets``, checking the required ones first.

    The image column is read only when named, so scoring never decodes images. ``datasets``
    prepares the file in ``cache_dir`` (its own cache when None).
    """
    try:
        found = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [column for column in required if column not in found]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found columns {', '.join(found)}")
    columns = [*required, *(column for column in optional if column in found)]
    return Dataset.from_parquet(str(path), columns=columns, cache_dir=None if cache_dir is None else str(cache_dir))


def _yes_no(value: object, source: str) -> str:
    label = str(value).strip().lower().rstrip(".")
    if label not in ("yes", "no"):
        raise ValueError(f"{source}: the 'answer' column must be yes or no, got {value!r}")
    return label


def load_pope_parquet(location: PathLike, cache_dir: PathLike | None = None) -> list[PopeQuestion]:
    """Read POPE questions with their labels from a local ``lmms-lab/POPE`` copy, in file and row order.

    The split of a row is its ``category``; a file without that column takes the split named
    in its file name (``adversarial-00000-of-00001.parquet`` is adversarial).
    """
    questions = []
    for path in parquet_files(location):
        table = read_parquet_columns(path, POPE_COLUMNS, ("category",), cache_dir)
        default_split = split_name_from_path(path)
        for number, row in enumerate(table, start=1):
            source = f"{path} row {number}"
            question_id = row["question_id"]
            questions.append(PopeQuestion(
                split=str(row.get("category") or default_split),
                question_id=None if question_id is None else str(question_id).strip(),
                image=str(row["image_source"]),
                text=str(row["question"]),
                label=_yes_no(row["answer"], source),
                source=source,
            ))
    if not questions:
        raise ValueError(f"{location}: the Parquet files contain no POPE questions")
    return questions


def load_mme_parquet(location: PathLike, cache_dir: PathLike | None = None) -> list[MmeRecord]:
    """Read MME questions with their labels from a local ``lmms-lab/MME`` copy, without answers.

    The subtask is ``category`` and the image key is ``question_id``, which the two questions
    of one image share; ``score_mme`` pairs them by it.
    """
    records = []
    for path in parquet_files(location):
        table = read_parquet_columns(path, MME_COLUMNS, (), cache_dir)
        for number, row in enumerate(table, start=1):
            source = f"{path} row {number}"
            records.append(MmeRecord(str(row["category"]), str(row["question_id"]), str(row["question"]),
                                     _yes_no(row["answer"], source), None, source))
    if not records:
        raise ValueError(f"{location}: the Parquet files contain no MME questions")
    return records


def attach_mme_answers(records: Sequence[MmeRecord], answers: Sequence[str] | Mapping[tuple[str, str], str]) -> list[MmeRecord]:
    """Return the records with model answers, given in record order or keyed by (question_id, question)."""
    if isinstance(answers, Mapping):
        missing = [record for record in records if (record.image, record.question) not in answers]
        if missing:
            raise ValueError(f"{len(missing)} of {len(records)} MME questions have no answer "
                             f"(first: {missing[0].image!r} {missing[0].question!r}); answer every question")
        return [replace(record, answer=str(answers[(record.image, record.question)])) for record in records]
    if len(answers) != len(records):
        raise ValueError(f"got {len(answers)} answers for {len(records)} MME questions; pass one answer per question, in order")
    return [replace(record, answer=str(answer)) for record, answer in zip(records, answers)]


def score_pope_answers(questions: Sequence[PopeQuestion], answers: Sequence[str] | Mapping[str, str],
                       parser: str = "official") -> PopeReport:
    """Score answers to POPE questions per split; ``answers`` are in question order or keyed by question_id."""
    if isinstance(answers, Mapping):
        seen: dict[str | None, PopeQuestion] = {}
        for question in questions:
            if question.question_id in seen:
                raise ValueError(f"question_id {question.question_id!r} occurs in both {seen[question.question_id].source} "
                                 f"and {question.source}; pass the answers in question order instead")
            seen[question.question_id] = question
        missing = [question for question in questions if question.question_id not in answers]
        if missing:
            raise ValueError(f"{len(missing)} of {len(questions)} POPE questions have no answer "
                             f"(first: question_id {missing[0].question_id!r}, {missing[0].source})")
        ordered = [str(answers[question.question_id]) for question in questions]
    else:
        if len(answers) != len(questions):
            raise ValueError(f"got {len(answers)} answers for {len(questions)} POPE questions; pass one answer per question, in order")
        ordered = [str(answer) for answer in answers]
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for question, answer in zip(questions, ordered):
        labels, texts = by_split.setdefault(question.split, ([], []))
        labels.append(question.label)
        texts.append(answer)
    splits = {split: score_pope(labels, texts, parser) for split, (labels, texts) in by_split.items()}
    return PopeReport(parser=parser, splits=splits, duplicate_questions=count_duplicate_questions(questions))
