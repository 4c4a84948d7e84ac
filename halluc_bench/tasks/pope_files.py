"""Read POPE question and answer files and pair every answer with its labelled question.

Question files come in two roles. A label file contains ``{question_id, image, text, label}``
records, one file per split (the official layout). LLaVA's merged question file contains the
three splits in one file without labels, with a ``category`` field naming the split and
question ids offset per split (1.., 10000001.., 20000001..). LLaVA's own evaluation takes
the labels of a split from its label file by position: the i-th merged question of a split
gets the i-th label. ``join_labels`` does the same and also checks that the image and the
question text agree, so a reordered or different label file is caught instead of
silently mis-scored.

Answer files come in the official form ``{question, answer}``, paired with the questions by
position, and in LLaVA's form ``{question_id, text}``, paired by question id.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from halluc_bench.tasks.io import read_records

logger = logging.getLogger(__name__)

POPE_SPLITS = ("random", "popular", "adversarial")

# LLaVA appends this instruction to every question of its merged file.
_PROMPT_SUFFIXES = ("Answer the question using a single word or phrase.",)


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question; ``label`` is None in files that carry no labels."""

    split: str
    question_id: str | None
    image: str
    text: str
    label: Literal["yes", "no"] | None
    source: str  # "FILE record N", for messages


@dataclass
class PairedAnswers:
    """Questions of each split paired with their answer texts, plus what could not be paired."""

    split_order: list[str]
    items: dict[str, list[tuple[PopeQuestion, str]]]
    missing_answers: dict[str, int]
    duplicate_questions: dict[str, int] = field(default_factory=dict)


def split_name_from_path(path: Path) -> str:
    """Return the split named in a question file's name (random, popular, adversarial), else the file stem."""
    found = re.findall("|".join(POPE_SPLITS), path.stem.lower())
    if len(set(found)) == 1:
        return found[0]
    return path.stem


def normalize_question_text(text: str) -> str:
    """Return the question without LLaVA's answer-format instruction, lower-cased, spaces collapsed."""
    for suffix in _PROMPT_SUFFIXES:
        text = text.replace(suffix, " ")
    return " ".join(text.split()).casefold()


def read_pope_questions(path: str | os.PathLike[str]) -> list[PopeQuestion]:
    """Read one POPE question file (JSON Lines or a JSON array) into ``PopeQuestion`` records."""
    path = Path(path)
    default_split = split_name_from_path(path)
    questions = []
    for index, record in enumerate(read_records(path), start=1):
        source = f"{path} record {index}"
        questions.append(_question_from_record(record, default_split, source))
    if not questions:
        raise ValueError(f"{path} contains no questions")
    return questions


def _question_from_record(record: dict[str, Any], default_split: str, source: str) -> PopeQuestion:
    text = record.get("text", record.get("question"))
    if not isinstance(text, str):
        raise ValueError(f"{source}: missing the question text field 'text'")
    label = record.get("label")
    if label is not None:
        label = str(label).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"{source}: label must be 'yes' or 'no', got {record['label']!r}")
    question_id = record.get("question_id")
    return PopeQuestion(
        split=str(record.get("category") or default_split),
        question_id=None if question_id is None else str(question_id).strip(),
        image=str(record.get("image", "")),
        text=text,
        label=label,
        source=source,
    )


def join_labels(questions: Sequence[PopeQuestion]) -> list[PopeQuestion]:
    """Return the questions to score, each with its label.

    Labelled questions are kept as they are. An unlabelled question takes the label of the
    question at the same position within its split's labelled questions when image and
    normalized text agree there. Otherwise it takes the label of the labelled questions of
    that split with the same image and text, which must agree. Labelled questions of a split that also has
    unlabelled questions only supply labels. A question left without a label is an error.
    """
    labelled: dict[str, list[PopeQuestion]] = defaultdict(list)
    unlabelled: dict[str, list[PopeQuestion]] = defaultdict(list)
    for question in questions:
        (labelled if question.label is not None else unlabelled)[question.split].append(question)

    result = []
    for split in dict.fromkeys(question.split for question in questions):
        if split not in unlabelled:
            result.extend(labelled[split])
            continue
        if not labelled[split]:
            first = unlabelled[split][0]
            raise ValueError(f"{first.source}: split {split!r} has no labels; also pass that split's label file ({{question_id, image, text, label}} records)")
        result.extend(_label_by_position(unlabelled[split], labelled[split]))
    return result


def _question_key(question: PopeQuestion) -> tuple[str, str]:
    return question.image, normalize_question_text(question.text)


def _label_by_position(targets: list[PopeQuestion], sources: list[PopeQuestion]) -> list[PopeQuestion]:
    by_key: dict[tuple[str, str], set[str]] = defaultdict(set)
    for source in sources:
        by_key[_question_key(source)].add(source.label)
    joined = []
    fallbacks = 0
    for position, target in enumerate(targets):
        key = _question_key(target)
        if position < len(sources) and _question_key(sources[position]) == key:
            label = sources[position].label
        elif len(by_key.get(key, ())) == 1:
            label = next(iter(by_key[key]))
            fallbacks += 1
        else:
            reason = "conflicting labels" if key in by_key else "no labelled question with that image and text"
            raise ValueError(f"{target.source}: question {target.text!r} on image {target.image!r} has no label in split {target.split!r} ({reason})")
        joined.append(PopeQuestion(target.split, target.question_id, target.image, target.text, label, target.source))
    if fallbacks:
        logger.warning("split %s: %d questions were not at the same position as in the label file and were labelled by image and text", targets[0].split, fallbacks)
    return joined


def count_duplicate_questions(questions: Sequence[PopeQuestion]) -> dict[str, int]:
    """Count, per split, questions that repeat an earlier question's image and text."""
    seen: set[tuple[str, str, str]] = set()
    duplicates: Counter[str] = Counter()
    for question in questions:
        key = (question.split, *_question_key(question))
        if key in seen:
            duplicates[question.split] += 1
        seen.add(key)
    return dict(duplicates)


def pair_answers(questions: Sequence[PopeQuestion], answers_path: str | os.PathLike[str]) -> PairedAnswers:
    """Pair the answers in ``answers_path`` with ``questions`` by question id or, without ids, by position."""
    answers_path = Path(answers_path)
    records = read_records(answers_path)
    if not records:
        raise ValueError(f"{answers_path} contains no answers")
    with_id = sum("question_id" in record for record in records)
    if with_id == len(records):
        pairs = _pair_by_id(questions, records, answers_path)
    elif with_id == 0:
        pairs = _pair_by_position(questions, records, answers_path)
    else:
        raise ValueError(f"{answers_path}: {with_id} of {len(records)} answers have a question_id; either all or none must have one")

    split_order = list(dict.fromkeys(question.split for question in questions))
    items: dict[str, list[tuple[PopeQuestion, str]]] = {split: [] for split in split_order}
    for question, answer in pairs:
        items[question.split].append((question, answer))
    totals = Counter(question.split for question in questions)
    missing = {split: totals[split] - len(items[split]) for split in split_order if totals[split] > len(items[split])}
    return PairedAnswers(split_order, items, missing, count_duplicate_questions(questions))


def _answer_text(record: dict[str, Any], source: str, keys: tuple[str, str]) -> str:
    for key in keys:
        if key in record:
            value = record[key]
            return "" if value is None else str(value)
    raise ValueError(f"{source}: missing the answer field ({' or '.join(repr(key) for key in keys)})")


def _pair_by_id(questions: Sequence[PopeQuestion], records: list[dict[str, Any]], path: Path) -> list[tuple[PopeQuestion, str]]:
    by_id: dict[str, PopeQuestion] = {}
    for question in questions:
        if question.question_id is None:
            raise ValueError(f"{question.source}: the answers are paired by question_id but this question has none")
        if question.question_id in by_id:
            other = by_id[question.question_id]
            raise ValueError(
                f"question_id {question.question_id} occurs in both {other.source} and {question.source}; "
                "pass LLaVA's merged question file (ids offset per split) or score one split at a time"
            )
        by_id[question.question_id] = question

    answers: dict[str, str] = {}
    extra = []
    differing = 0
    for index, record in enumerate(records, start=1):
        question_id = str(record["question_id"]).strip()
        text = _answer_text(record, f"{path} record {index}", ("text", "answer"))
        if question_id in answers:
            raise ValueError(f"{path} record {index}: a second answer to question_id {question_id}; keep one answer per question")
        if question_id not in by_id:
            extra.append(question_id)
        elif isinstance(record.get("prompt"), str) and _differs(record["prompt"], by_id[question_id].text):
            differing += 1
        answers[question_id] = text
    if differing:
        logger.warning("%s: %d answers carry a prompt that differs from the text of the question with the same question_id", path, differing)

    missing = [question_id for question_id in by_id if question_id not in answers]
    if extra:
        raise ValueError(
            f"{path} answers a different question set: {len(missing)} questions have no answer and "
            f"{len(extra)} answers have a question_id that is in no question file (first: {', '.join(extra[:3])}); "
            "pass the question files these answers were made from"
        )
    if missing:
        logger.warning("%s: %d of %d questions have no answer", path, len(missing), len(by_id))
    return [(by_id[question_id], answers[question_id]) for question_id in by_id if question_id in answers]


def _differs(echoed_question: str, question_text: str) -> bool:
    return normalize_question_text(echoed_question) != normalize_question_text(question_text)


def _pair_by_position(questions: Sequence[PopeQuestion], records: list[dict[str, Any]], path: Path) -> list[tuple[PopeQuestion, str]]:
    if len(records) != len(questions):
        raise ValueError(
            f"{path} contains {len(records)} answer records but the question files contain {len(questions)} questions; "
            "answers without a question_id are paired by position, so the counts must match"
        )
    pairs = []
    differing = 0
    for index, (question, record) in enumerate(zip(questions, records), start=1):
        pairs.append((question, _answer_text(record, f"{path} record {index}", ("answer", "text"))))
        echoed_question = record.get("question")
        if isinstance(echoed_question, str) and _differs(echoed_question, question.text):
            differing += 1
    if differing:
        logger.warning("%s: %d answers repeat a question text that differs from the question at the same position", path, differing)
    return pairs
