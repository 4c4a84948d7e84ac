"""MME: 14 yes/no subtasks, two questions per image, scored as in the official eval tool.

Each subtask is a text file of ``image \\t question \\t Yes|No [\\t answer]`` lines, the two
questions of one image on adjacent lines. Subtask score = 100 * (acc + acc+), where acc is
the share of questions answered right and acc+ the share of images with both questions
right, so a subtask scores at most 200; perception sums 10 subtasks and cognition 4.

Answer rule of the official tool: lower-case the answer; "yes" or "no" is taken as is;
otherwise "yes" within the first 4 characters gives yes, else "no" there gives no, else the
answer is "other" and counts as wrong.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from halluc_bench.tasks.io import read_records, read_text

logger = logging.getLogger(__name__)

PERCEPTION_SUBTASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_CATEGORIES: dict[str, tuple[str, ...]] = {"perception": PERCEPTION_SUBTASKS, "cognition": COGNITION_SUBTASKS}
MME_SUBTASKS = PERCEPTION_SUBTASKS + COGNITION_SUBTASKS

# LLaVA rewrites each MME question: it replaces " Please answer yes or no." with this line.
_PROMPT_PHRASES = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


@dataclass(frozen=True)
class MmeRecord:
    """One MME question with its key label and, once answered, the model's answer."""

    subtask: str
    image: str
    question: str
    label: Literal["yes", "no"]
    answer: str | None = None
    source: str = ""  # "FILE:LINE", for messages


def parse_mme_answer(text: str) -> Literal["yes", "no", "other"]:
    """Parse an answer with the official MME rule; see the module docstring."""
    text = ("" if text is None else str(text)).lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@dataclass(frozen=True)
class MmeSubtaskScore:
    """Scores of one subtask; ``acc`` and ``acc_plus`` are fractions, ``score`` is on the 0-200 scale."""

    acc: float
    acc_plus: float
    score: float
    n: int  # questions
    n_images: int
    other: int  # answers that are neither yes nor no

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class MmeReport:
    """MME scores per subtask and the perception (max 2000) and cognition (max 800) totals.

    A total sums the subtasks that were scored. ``missing_subtasks`` lists the standard
    subtasks that had no questions, so a total over fewer subtasks is visible as such.
    """

    subtasks: dict[str, MmeSubtaskScore]
    missing_subtasks: list[str] = field(default_factory=list)

    def category_total(self, category: str) -> float:
        if category not in MME_CATEGORIES:
            raise KeyError(f"unknown MME category {category!r}; valid: {', '.join(MME_CATEGORIES)}")
        return sum(self.subtasks[name].score for name in MME_CATEGORIES[category] if name in self.subtasks)

    @property
    def perception(self) -> float:
        return self.category_total("perception")

    @property
    def cognition(self) -> float:
        return self.category_total("cognition")

    def to_dict(self) -> dict[str, Any]:
        return {
            "subtasks": {name: score.to_dict() for name, score in self.subtasks.items()},
            "perception": self.perception,
            "cognition": self.cognition,
            "missing_subtasks": list(self.missing_subtasks),
        }


def _as_record(item: MmeRecord | Mapping[str, Any], index: int) -> MmeRecord:
    if isinstance(item, MmeRecord):
        return item
    try:
        label = str(item["label"]).strip().lower()
        return MmeRecord(str(item["subtask"]), str(item["image"]), str(item["question"]), label, item["answer"], str(item.get("source", "")))
    except KeyError as error:
        raise ValueError(f"MME record {index} lacks {error.args[0]!r}; records need subtask, image, question, label and answer") from error


def score_mme(records: Iterable[MmeRecord | Mapping[str, Any]]) -> MmeReport:
    """Score answered MME records (``MmeRecord`` or mappings with the same keys), per subtask.

    Each image of a subtask must have exactly two questions; another count is an error that
    names the image and the subtask. Subtasks outside the standard 14 are scored too but
    belong to neither total.
    """
    images: dict[str, dict[str, list[MmeRecord]]] = {}
    for index, item in enumerate(records):
        record = _as_record(item, index)
        where = record.source or f"record {index}"
        if record.label not in ("yes", "no"):
            raise ValueError(f"{where}: label must be Yes or No, got {record.label!r}")
        if record.answer is None:
            raise ValueError(f"{where}: no answer for image {record.image!r} in subtask {record.subtask!r}")
        images.setdefault(record.subtask, {}).setdefault(record.image, []).append(record)
    if not images:
        raise ValueError("no MME records to score")

    scores = {}
    for subtask in sorted(images, key=_subtask_order):
        scores[subtask] = _score_subtask(subtask, images[subtask])
    missing = [name for name in MME_SUBTASKS if name not in scores]
    if missing:
        logger.info("MME subtasks without questions: %s; the totals leave them out", ", ".join(missing))
    return MmeReport(scores, missing)


def _subtask_order(name: str) -> tuple[int, str]:
    return (MME_SUBTASKS.index(name), "") if name in MME_SUBTASKS else (len(MME_SUBTASKS), name)


def _score_subtask(subtask: str, images: dict[str, list[MmeRecord]]) -> MmeSubtaskScore:
    correct = both_correct = other = questions = 0
    for image, pair in images.items():
        if len(pair) != 2:
            sources = ", ".join(record.source for record in pair if record.source)
            raise ValueError(
                f"image {image!r} in subtask {subtask!r} has {len(pair)} questions ({sources or 'no source'}); "
                "each image needs exactly two"
            )
        right = 0
        for record in pair:
            prediction = parse_mme_answer(record.answer)
            other += prediction == "other"
            right += prediction == record.label
        questions += len(pair)
        correct += right
        both_correct += right == 2
    acc = correct / questions
    acc_plus = both_correct / len(images)
    return MmeSubtaskScore(acc, acc_plus, 100 * (acc + acc_plus), questions, len(images), other)


def _read_tool_file(path: Path, subtask: str, require_answer: bool) -> list[MmeRecord]:
    """Read one eval-tool subtask file (3 columns, or 4 when ``require_answer``)."""
    records = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        columns = line.split("\t", 3)
        source = f"{path}:{number}"
        if len(columns) < 3 or (require_answer and len(columns) < 4):
            expected = "image, question, Yes/No and the answer" if require_answer else "image, question and Yes/No"
            raise ValueError(f"{source}: expected tab-separated {expected}, got {len(columns)} columns")
        label = columns[2].strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"{source}: the third column must be Yes or No, got {columns[2]!r}")
        answer = columns[3] if len(columns) == 4 else None
        records.append(MmeRecord(subtask, columns[0], columns[1], label, answer, source))
    return records


def _read_tool_dir(directory: str | os.PathLike[str], require_answer: bool) -> list[MmeRecord]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MME folder not found: {directory}")
    files = sorted(directory.glob("*.txt"), key=lambda path: _subtask_order(path.stem))
    unknown = [path.name for path in files if path.stem not in MME_SUBTASKS]
    if unknown:
        raise ValueError(f"{directory}: {', '.join(unknown)} is not an MME subtask file; valid names are {', '.join(name + '.txt' for name in MME_SUBTASKS)}")
    if not files:
        raise ValueError(f"{directory} contains no MME subtask files (existence.txt, count.txt, ...)")
    records = []
    for path in files:
        records.extend(_read_tool_file(path, path.stem, require_answer))
    return records


def load_mme_results_dir(directory: str | os.PathLike[str]) -> list[MmeRecord]:
    """Read an eval-tool results folder: one ``SUBTASK.txt`` per subtask, 4 columns per line."""
    return _read_tool_dir(directory, require_answer=True)


def load_mme_key_dir(directory: str | os.PathLike[str]) -> list[MmeRecord]:
    """Read an eval-tool answer key folder (3 columns per line; a 4th column is ignored)."""
    return [MmeRecord(r.subtask, r.image, r.question, r.label, None, r.source) for r in _read_tool_dir(directory, require_answer=False)]


def normalize_mme_question(question: str) -> str:
    """Return the question without the yes/no instruction phrases, spaces collapsed."""
    for phrase in _PROMPT_PHRASES:
        question = question.replace(phrase, " ")
    return " ".join(question.split())


def _key_of(subtask: str, image: str, question: str) -> tuple[str, str, str]:
    return subtask, os.path.splitext(os.path.basename(image))[0], normalize_mme_question(question)


def load_mme_llava_answers(answers_path: str | os.PathLike[str], gt_dir: str | os.PathLike[str]) -> list[MmeRecord]:
    """Pair LLaVA's MME answers (``question_id`` = ``subtask/.../image``, ``prompt``, ``text``) with a key folder.

    As LLaVA's converter does, an answer matches the key line of the same subtask, the same
    image file name without extension, and the same question once the yes/no instruction
    phrases are removed and spaces collapsed. Every key line needs exactly one answer and
    every answer one key line; otherwise the error gives the counts. Records come back in
    key order.
    """
    answers_path = Path(answers_path)
    key_records = load_mme_key_dir(gt_dir)
    key_index: dict[tuple[str, str, str], int] = {}
    for position, record in enumerate(key_records):
        key = _key_of(record.subtask, record.image, record.question)
        if key in key_index:
            raise ValueError(f"{record.source}: repeats the question of {key_records[key_index[key]].source}; the key must list each question once")
        key_index[key] = position

    answers: dict[int, str] = {}
    unmatched = []
    for index, item in enumerate(read_records(answers_path), start=1):
        source = f"{answers_path} record {index}"
        try:
            question_id, prompt, text = str(item["question_id"]), str(item["prompt"]), item["text"]
        except KeyError as error:
            raise ValueError(f"{source}: missing {error.args[0]!r}; LLaVA answers need question_id, prompt and text") from error
        position = key_index.get(_key_of(question_id.split("/")[0], question_id, prompt))
        if position is None:
            unmatched.append(f"{question_id} {normalize_mme_question(prompt)!r}")
        elif position in answers:
            raise ValueError(f"{source}: a second answer to {key_records[position].source}; keep one answer per question")
        else:
            answers[position] = "" if text is None else str(text)

    missing = [record for position, record in enumerate(key_records) if position not in answers]
    if unmatched or missing:
        example = f" (first unmatched answer: {unmatched[0]})" if unmatched else f" (first unanswered: {missing[0].source})"
        raise ValueError(
            f"{answers_path} does not match the key in {gt_dir}: {len(missing)} key questions have no answer "
            f"and {len(unmatched)} answers match no key question{example}; use the key these answers were made for"
        )
    return [MmeRecord(r.subtask, r.image, r.question, r.label, answers[position], r.source) for position, r in enumerate(key_records)]
