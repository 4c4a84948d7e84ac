"""POPE: polling-based object probing ("Is there a {object} in the image?"), scored as yes/no.

Two answer parsers are registered:

- ``official``: the rule of the POPE and LLaVA evaluation scripts. Keep the text before
  the first "."; delete commas; split on single spaces; the answer is "no" when a token is
  exactly ``No``, ``no`` or ``not``, else "yes". Empty or unreadable output counts as "yes".
- ``strict``: reads the leading answer and returns "unknown" for empty text, hedges and
  refusals (see ``parse_answer_strict``).

Metric convention (positive class "yes"): an answer that the parser in use returns as
"unknown" is counted in ``unknown`` and left out of TP/FP/TN/FN, so accuracy, precision,
recall, F1 and yes-ratio are computed over the decided answers only, and ``unknown_rate``
(unknown / n) is reported beside them. With the ``official`` parser no answer is left out,
but ``unknown`` still counts the answers that ``parse_answer_strict`` cannot read, so an
empty or evasive output that the official rule scores as "yes" stays visible.

Duplicated questions: a question file may ask the same question about the same image twice
under two question ids (the A-OKVQA and GQA adversarial splits each do once). Each question
id is scored as its own question, as the official evaluation does, and the number of such
repeats per split is reported in ``PopeReport.duplicate_questions``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

from halluc_bench.registry import Registry
from halluc_bench.tasks.pope_build import build_pope, write_pope_questions
from halluc_bench.tasks.pope_files import POPE_SPLITS, join_labels, pair_answers, read_pope_questions

logger = logging.getLogger(__name__)

__all__ = [
    "POPE_PARSERS",
    "POPE_SPLITS",
    "PopeMetrics",
    "PopeReport",
    "build_pope",
    "parse_answer_official",
    "parse_answer_strict",
    "score_pope",
    "score_pope_files",
    "write_pope_questions",
]

Prediction = Literal["yes", "no", "unknown"]

POPE_PARSERS: Registry[Callable[[str], Prediction]] = Registry("POPE answer parser")


@POPE_PARSERS.register("official")
def parse_answer_official(text: str) -> Literal["yes", "no"]:
    """Parse an answer with the official POPE rule; anything without a negation token is "yes"."""
    text = "" if text is None else str(text)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    if "No" in words or "no" in words or "not" in words:
        return "no"
    return "yes"


_YES_WORDS = frozenset({"yes", "yeah", "yep", "yup", "correct", "true", "affirmative", "certainly", "definitely"})
_NO_WORDS = frozenset({"no", "nope", "nah", "not", "none", "false", "incorrect", "negative"})
# Phrases that make the first sentence a hedge or a refusal rather than an answer.
_HEDGE_PATTERN = re.compile(
    r"\b(?:not sure|unsure|uncertain|unclear|maybe|possibly|perhaps|might|may be|could be|"
    r"hard to (?:tell|say|determine)|difficult to (?:tell|say|determine)|impossible to|"
    r"(?:can ?not|can't|unable to|not able to) (?:tell|say|determine|answer|confirm|see the image)|"
    r"i don't know|i do not know|sorry|as an ai|i apologi[sz]e)\b"
)
_BOTH_PATTERN = re.compile(r"^(?:yes|no)\s*(?:/|or|and|,)\s*(?:yes|no)\b")
_THERE_IS_NO = re.compile(r"^there (?:is|are)(?: no\b| not\b|n't\b)|^there's no\b|^i (?:do not|don't) see\b")
_THERE_IS = re.compile(r"^there (?:is|are)\b|^there's\b|^i (?:can )?see\b")
_LEAD_IN = re.compile(r"^(?:answer|a|response|output)\s*:\s*")


@POPE_PARSERS.register("strict")
def parse_answer_strict(text: str) -> Prediction:
    """Parse the leading answer of a reply; return "unknown" for empty text, hedges and refusals.

    The first sentence decides. It is "unknown" when it is empty, contains a hedge or
    refusal phrase ("not sure", "maybe", "I cannot tell", "sorry", ...) or offers both
    answers ("yes or no"). Otherwise a leading yes word ("Yes, there is...", "Correct")
    gives "yes", a leading no word ("No.", "Not in the image", "None") gives "no", and
    "There is no ..." / "I don't see ..." and "There is a ..." / "I see ..." give "no"
    and "yes". Any other reply is "unknown".
    """
    text = "" if text is None else str(text)
    normalized = " ".join(text.casefold().replace("’", "'").split())
    normalized = normalized.lstrip("*_\"'`>-#:. ")
    normalized = _LEAD_IN.sub("", normalized).lstrip("*_\"'`>-#:. ")
    first_sentence = re.split(r"[.!?\n]", normalized, maxsplit=1)[0].strip()
    if not first_sentence or _HEDGE_PATTERN.search(first_sentence) or _BOTH_PATTERN.match(first_sentence):
        return "unknown"
    words = re.findall(r"[a-z']+", first_sentence)
    if words and words[0] in _YES_WORDS:
        return "yes"
    if words and words[0] in _NO_WORDS:
        return "no"
    if _THERE_IS_NO.match(first_sentence):
        return "no"
    if _THERE_IS.match(first_sentence):
        return "yes"
    return "unknown"


@dataclass(frozen=True)
class PopeMetrics:
    """Confusion counts and metrics of one POPE split; rates are fractions in [0, 1]."""

    tp: int
    fp: int
    tn: int
    fn: int
    n: int  # answered questions, unknown ones included
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float  # share of decided predictions that are "yes"
    unknown: int
    unknown_rate: float  # unknown / n

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def score_pope(labels: Sequence[str], answers: Sequence[str], parser: str = "official") -> PopeMetrics:
    """Score answer texts against "yes"/"no" labels of the same length with the named parser.

    Precision is 0 when nothing is predicted "yes", F1 is 0 when precision + recall is 0,
    and every rate is 0 when no answer is decided.
    """
    if len(labels) != len(answers):
        raise ValueError(f"got {len(labels)} labels but {len(answers)} answers; pass one answer per label")
    parse = POPE_PARSERS.get(parser)
    tp = fp = tn = fn = unknown = 0
    for index, (label, answer) in enumerate(zip(labels, answers)):
        label = str(label).strip().lower()
        if label not in ("yes", "no"):
            raise ValueError(f"label {index} must be 'yes' or 'no', got {labels[index]!r}")
        if parse_answer_strict(answer) == "unknown":
            unknown += 1
        prediction = parse(answer)
        if prediction == "yes" and label == "yes":
            tp += 1
        elif prediction == "yes":
            fp += 1
        elif prediction == "no" and label == "no":
            tn += 1
        elif prediction == "no":
            fn += 1
        elif prediction != "unknown":
            raise ValueError(f"POPE answer parser {parser!r} returned {prediction!r}; expected 'yes', 'no' or 'unknown'")

    decided = tp + fp + tn + fn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeMetrics(
        tp=tp, fp=fp, tn=tn, fn=fn, n=len(labels),
        accuracy=_ratio(tp + tn, decided), precision=precision, recall=recall, f1=f1,
        yes_ratio=_ratio(tp + fp, decided), unknown=unknown, unknown_rate=_ratio(unknown, len(labels)),
    )


@dataclass
class PopeReport:
    """POPE metrics per split of one answer file.

    ``mean_f1`` is the mean F1 over the scored splits, the single POPE number papers report.
    It is None when a split has questions but no answers (listed in ``missing_splits``),
    because a mean over fewer splits is not comparable. ``missing_answers`` counts, per
    split, questions without an answer (the splits in ``splits`` are scored on the answered
    questions only).
    """

    parser: str
    splits: dict[str, PopeMetrics]
    missing_splits: list[str] = field(default_factory=list)
    missing_answers: dict[str, int] = field(default_factory=dict)
    duplicate_questions: dict[str, int] = field(default_factory=dict)

    @property
    def mean_f1(self) -> float | None:
        if self.missing_splits or not self.splits:
            return None
        return sum(metrics.f1 for metrics in self.splits.values()) / len(self.splits)

    def to_dict(self) -> dict:
        return {
            "parser": self.parser,
            "splits": {name: metrics.to_dict() for name, metrics in self.splits.items()},
            "mean_f1": self.mean_f1,
            "missing_splits": list(self.missing_splits),
            "missing_answers": dict(self.missing_answers),
            "duplicate_questions": dict(self.duplicate_questions),
        }


def score_pope_files(
    question_paths: Sequence[str | os.PathLike[str]],
    answers_path: str | os.PathLike[str],
    parser: str = "official",
) -> PopeReport:
    """Score one answer file against POPE question files and return the metrics per split.

    ``question_paths`` are label files (``{question_id, image, text, label}``, one split each,
    split named by the ``category`` field or the file name) and optionally LLaVA's merged
    question file, whose questions take their labels from the label files.
    """
    POPE_PARSERS.get(parser)  # reject an unknown parser before reading any file
    if not question_paths:
        raise ValueError("no question files given; pass at least one POPE question file")
    questions = []
    for path in question_paths:
        questions.extend(read_pope_questions(path))
    paired = pair_answers(join_labels(questions), answers_path)

    report = PopeReport(parser=parser, splits={}, duplicate_questions=paired.duplicate_questions)
    for split in paired.split_order:
        items = paired.items[split]
        if not items:
            report.missing_splits.append(split)
            logger.warning("split %s has questions but no answers in %s", split, answers_path)
            continue
        labels = [question.label for question, _ in items]
        report.splits[split] = score_pope(labels, [answer for _, answer in items], parser)
        if split in paired.missing_answers:
            report.missing_answers[split] = paired.missing_answers[split]
    for split, count in paired.duplicate_questions.items():
        logger.info("split %s repeats %d questions (same image and text); each is scored as its own question", split, count)
    return report
