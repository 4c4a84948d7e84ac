"""CHAIR: object hallucination in image captions (Rohrbach et al., 2018).

A caption's object mentions are found as follows. The caption is lower-cased, tokenized
and lemmatized (``chair_text``). Then adjacent lemma pairs that name one object are merged
into one token, scanning left to right. The pairs are the COCO two-word names ("hot dog",
"teddy bear", "traffic light", ...), "baby" or "adult" before an animal word (the animal,
not a person), "passenger jet" and "passenger train" (the vehicle), "bow tie" (a tie) and
"toilet seat" (a toilet). When the merged tokens contain both "toilet" and "seat", every
"seat" is dropped, because it is the toilet's seat and not a chair. Every remaining token
that the synonym list names is a mention of that synonym's canonical COCO object.

The ground-truth objects of an image are its COCO instance categories plus the objects
mentioned in its reference captions, both mapped to canonical names.

Metrics over a set of captions, with repeated mentions counted:

- CHAIR_i = hallucinated mentions / all mentions (0 when there are no mentions);
- CHAIR_s = share of captions with at least one hallucinated mention;
- recall = sum over captions of |distinct mentioned objects & ground truth| / sum of |ground truth|;
- len = mean number of merged tokens per caption / 100.

An image id without ground truth raises ``MissingGroundTruthError``; it is never scored as
"everything hallucinated".
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tqdm import tqdm

from halluc_bench.tasks.chair_text import Lemmatizer, lemmatize_tokens, tokenize_caption, validate_lemmatizer

logger = logging.getLogger(__name__)

__all__ = [
    "CaptionObjects",
    "CaptionScore",
    "ChairEvaluator",
    "ChairReport",
    "MissingGroundTruthError",
    "ObjectMention",
    "Synonyms",
    "build_two_word_map",
    "extract_objects",
    "find_mentions",
    "load_synonyms",
    "merge_two_word_names",
]

SYNONYMS_FILE = "synonyms.txt"

# Two-word object names merged into one token. "stove top oven", a three-word name in the
# original rule set, is left out: a pair of tokens can never match it.
COCO_TWO_WORD_NAMES = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "home plate", "train track",
)
# "baby X" and "adult X" name the animal X, not a person.
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# "passenger X" names the vehicle X, not a person.
VEHICLE_WORDS = ("jet", "train")
SPECIAL_TWO_WORD_NAMES = {
    "bow tie": "tie",
    "toilet seat": "toilet",
    "wine glas": "wine glass",  # pattern's singular of "glasses" is "glass", but of "glass" it is "glas"
}


class MissingGroundTruthError(KeyError):
    """Captions whose image ids have no ground-truth objects."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def build_two_word_map() -> dict[str, str]:
    """Return the map from a merged lemma pair ("teddy bear") to the token it becomes ("teddy bear", "tie", ...)."""
    pairs = {name: name for name in COCO_TWO_WORD_NAMES}
    for animal in ANIMAL_WORDS:
        pairs[f"baby {animal}"] = animal
        pairs[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        pairs[f"passenger {vehicle}"] = vehicle
    pairs.update(SPECIAL_TWO_WORD_NAMES)
    return pairs


@dataclass(frozen=True)
class Synonyms:
    """A synonym list: each word or phrase it names, mapped to its canonical COCO object name."""

    canonical: tuple[str, ...]  # one name per line of the list, in file order
    to_canonical: Mapping[str, str]
    source: str = "<memory>"

    def __post_init__(self) -> None:
        unknown = sorted({name for name in self.to_canonical.values() if name not in self.canonical})
        if unknown:
            raise ValueError(f"synonym list {self.source}: canonical names not defined by any line: {', '.join(unknown)}")

    def __contains__(self, word: object) -> bool:
        return word in self.to_canonical

    def canonical_name(self, word: str) -> str:
        """Return the canonical object that ``word`` names; raise ``KeyError`` for a word the list does not name."""
        try:
            return self.to_canonical[word]
        except KeyError:
            raise KeyError(f"{word!r} is not in the synonym list {self.source}; valid canonical names: "
                           f"{', '.join(self.canonical)}") from None

    @property
    def unmatchable(self) -> list[str]:
        """Entries with leading or trailing spaces, which no token can equal."""
        return sorted(word for word in self.to_canonical if word != word.strip())


def load_synonyms(path: str | os.PathLike[str] | None = None) -> Synonyms:
    """Read a synonym list: one object per line, canonical name first, entries separated by ", ".

    Without ``path``, the shipped original CHAIR list (80 COCO objects) is read. Entries are
    kept exactly as split, as the original CHAIR code keeps them, so an entry after a double
    space (" motor bike" in the original list) can never match. Blank lines are skipped.
    A word listed on two lines maps to the object of the later line.
    """
    if path is None:
        text = resources.files("halluc_bench").joinpath("data", "chair", SYNONYMS_FILE).read_text(encoding="utf-8")
        source = f"halluc_bench/data/chair/{SYNONYMS_FILE}"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"synonym list not found: {path}")
        text = Path(path).read_text(encoding="utf-8-sig")
        source = str(path)
    canonical: list[str] = []
    to_canonical: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        entries = line.split(", ")
        canonical.append(entries[0])
        for entry in entries:
            to_canonical[entry] = entries[0]
    if not canonical:
        raise ValueError(f"synonym list {source} names no objects; expected lines like 'dog, puppy, pup'")
    synonyms = Synonyms(canonical=tuple(canonical), to_canonical=to_canonical, source=source)
    if synonyms.unmatchable:
        logger.debug("synonym list %s has entries that no token can match: %s", source, synonyms.unmatchable)
    return synonyms


@dataclass(frozen=True)
class ObjectMention:
    """One mention of a COCO object in a caption."""

    word: str  # the merged token, e.g. "teddy bear" or "puppy"
    object: str  # its canonical COCO name, e.g. "dog"
    index: int  # position of ``word`` in the merged token list
    span: tuple[int, int]  # character offsets (start, end) of the mention in the original caption


@dataclass(frozen=True)
class CaptionObjects:
    """A parsed caption: its merged tokens and the object mentions among them."""

    caption: str
    words: tuple[str, ...]
    mentions: tuple[ObjectMention, ...]

    @property
    def objects(self) -> list[str]:
        """Canonical objects in mention order, repeats included."""
        return [mention.object for mention in self.mentions]

    @property
    def indices(self) -> list[int]:
        """Positions of the mentions in ``words``."""
        return [mention.index for mention in self.mentions]


def extract_objects(
    caption: str, synonyms: Synonyms | None = None, lemmatizer: Lemmatizer | str = "wordnet"
) -> list[ObjectMention]:
    """Return the object mentions of one caption, each with its character span in ``caption``."""
    synonyms = synonyms if synonyms is not None else load_synonyms()
    parsed = _parse_caption(caption, synonyms, validate_lemmatizer(lemmatizer), build_two_word_map())
    return list(parsed.mentions)


def _parse_caption(caption: str, synonyms: Synonyms, lemmatizer: Lemmatizer, two_words: Mapping[str, str]) -> CaptionObjects:
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    tokens = tokenize_caption(caption)
    lemmas = lemmatize_tokens([token.text for token in tokens], lemmatizer)
    words, spans = merge_two_word_names(lemmas, [(token.start, token.end) for token in tokens], two_words)
    return CaptionObjects(caption=caption, words=tuple(words), mentions=tuple(find_mentions(words, spans, synonyms)))


def merge_two_word_names(
    lemmas: Sequence[str], spans: Sequence[tuple[int, int]], two_words: Mapping[str, str]
) -> tuple[list[str], list[tuple[int, int]]]:
    """Merge adjacent lemma pairs named in ``two_words``, scanning left to right; return the tokens and their spans."""
    words: list[str] = []
    merged_spans: list[tuple[int, int]] = []
    position = 0
    while position < len(lemmas):
        pair = " ".join(lemmas[position:position + 2])
        if position + 1 < len(lemmas) and pair in two_words:
            words.append(two_words[pair])
            merged_spans.append((spans[position][0], spans[position + 1][1]))
            position += 2
        else:
            words.append(lemmas[position])
            merged_spans.append(spans[position])
            position += 1
    return words, merged_spans


def find_mentions(words: Sequence[str], spans: Sequence[tuple[int, int]], synonyms: Synonyms) -> list[ObjectMention]:
    """Return the object mentions among merged tokens; "seat" is no chair when a "toilet" is mentioned too."""
    skip_seat = "toilet" in words and "seat" in words
    return [
        ObjectMention(word=word, object=synonyms.to_canonical[word], index=index, span=spans[index])
        for index, word in enumerate(words)
        if word in synonyms.to_canonical and not (skip_seat and word == "seat")
    ]


@dataclass(frozen=True)
class CaptionScore:
    """The CHAIR result of one caption."""

    image_id: int
    caption: str
    words: tuple[str, ...]
    generated_objects: tuple[str, ...]  # canonical objects mentioned, repeats included
    generated_words: tuple[str, ...]  # the merged tokens of those mentions
    mention_indices: tuple[int, ...]
    gt_objects: tuple[str, ...]  # sorted
    hallucinated_objects: tuple[str, ...]
    hallucinated_words: tuple[str, ...]
    # Positions in ``words``, the merged tokens. The reference script reports positions in
    # the token list before merging, which differ after a merged pair.
    hallucination_indices: tuple[int, ...]

    @property
    def hallucinated(self) -> bool:
        return bool(self.hallucinated_objects)

    @property
    def chair_i(self) -> float:
        return len(self.hallucinated_objects) / len(self.generated_objects) if self.generated_objects else 0.0

    @property
    def recall(self) -> float:
        if not self.gt_objects:
            return 0.0
        return len(set(self.generated_objects) & set(self.gt_objects)) / len(self.gt_objects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "caption": self.caption,
            "words": list(self.words),
            "generated_objects": list(self.generated_objects),
            "generated_words": list(self.generated_words),
            "mention_indices": list(self.mention_indices),
            "gt_objects": list(self.gt_objects),
            "hallucinated_objects": list(self.hallucinated_objects),
            "hallucinated_words": list(self.hallucinated_words),
            "hallucination_indices": list(self.hallucination_indices),
            "chair_s": int(self.hallucinated),
            "chair_i": self.chair_i,
            "recall": self.recall,
        }


@dataclass(frozen=True)
class ChairReport:
    """CHAIR over a set of captions (fractions, not percent) and the per-caption results."""

    chair_s: float
    chair_i: float
    recall: float
    len: float
    n: int
    mentions: int
    hallucinated_mentions: int
    lemmatizer: str
    per_caption: tuple[CaptionScore, ...] = field(repr=False)

    def summary(self) -> dict[str, float | int]:
        """Return the overall metrics: chair_s, chair_i, recall, len and n."""
        return {"chair_s": self.chair_s, "chair_i": self.chair_i, "recall": self.recall, "len": self.len, "n": self.n}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "mentions": self.mentions,
            "hallucinated_mentions": self.hallucinated_mentions,
            "lemmatizer": self.lemmatizer,
            "per_caption": [score.to_dict() for score in self.per_caption],
        }


class ChairEvaluator:
    """Score captions against per-image ground-truth objects with the CHAIR rules."""

    def __init__(
        self,
        gt_objects: Mapping[int, Iterable[str]],
        synonyms: Synonyms | None = None,
        lemmatizer: Lemmatizer | str = "wordnet",
    ):
        self.synonyms = synonyms if synonyms is not None else load_synonyms()
        self.lemmatizer: Lemmatizer = validate_lemmatizer(lemmatizer)
        self.two_words = build_two_word_map()
        self.gt_objects: dict[int, frozenset[str]] = {}
        for image_id, objects in gt_objects.items():
            if isinstance(objects, str):
                raise ValueError(f"ground truth of image {image_id} is a string; expected a list of object names")
            self.gt_objects[_image_id(image_id, "ground truth")] = frozenset(objects)

    @classmethod
    def from_gt_json(
        cls, path: str | os.PathLike[str], synonyms: Synonyms | None = None, lemmatizer: Lemmatizer | str = "wordnet"
    ) -> ChairEvaluator:
        """Build an evaluator from a ``{image_id: [canonical objects]}`` JSON file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ground-truth objects file not found: {path}")
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected an object mapping image ids to object lists, got {type(raw).__name__}")
        for image_id, objects in raw.items():
            if not isinstance(objects, list):
                raise ValueError(f"{path}: image {image_id} maps to {type(objects).__name__}; expected a list of object names")
        logger.info("read ground-truth objects of %d images from %s", len(raw), path)
        return cls(raw, synonyms=synonyms, lemmatizer=lemmatizer)

    @classmethod
    def from_coco(
        cls,
        instances_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        captions_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        synonyms: Synonyms | None = None,
        lemmatizer: Lemmatizer | str = "wordnet",
    ) -> ChairEvaluator:
        """Build an evaluator from COCO instance and caption annotation files (several files are merged).

        Every image listed in any of the files has ground truth, which may be empty.
        """
        # Imported here, so that scoring against a ground-truth JSON file never imports pycocotools.
        from halluc_bench.tasks.chair_gt import objects_from_coco

        synonyms = synonyms if synonyms is not None else load_synonyms()
        parser = cls({}, synonyms=synonyms, lemmatizer=lemmatizer)  # parses the reference captions
        truth = objects_from_coco(_as_paths(instances_paths), _as_paths(captions_paths), parser.caption_objects, synonyms)
        return cls(truth, synonyms=synonyms, lemmatizer=lemmatizer)

    @classmethod
    def from_coco_dir(
        cls, directory: str | os.PathLike[str], synonyms: Synonyms | None = None, lemmatizer: Lemmatizer | str = "wordnet"
    ) -> ChairEvaluator:
        """Build an evaluator from every ``instances_*.json`` and ``captions_*.json`` file in ``directory``."""
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"COCO annotation folder not found: {folder}")
        instances = sorted(folder.glob("instances_*.json"))
        captions = sorted(folder.glob("captions_*.json"))
        if not instances or not captions:
            raise FileNotFoundError(
                f"{folder} needs both instances_*.json and captions_*.json files; found "
                f"{len(instances)} instance and {len(captions)} caption files"
            )
        return cls.from_coco(instances, captions, synonyms=synonyms, lemmatizer=lemmatizer)

    def caption_objects(self, caption: str) -> CaptionObjects:
        """Parse one caption into merged tokens and object mentions (with word indices and character spans)."""
        return _parse_caption(caption, self.synonyms, self.lemmatizer, self.two_words)

    def score(self, captions: Sequence[tuple[int | str, str]]) -> ChairReport:
        """Score ``(image_id, caption)`` pairs; raise ``MissingGroundTruthError`` if any image has no ground truth."""
        pairs = [(_image_id(image_id, "caption"), caption) for image_id, caption in captions]
        if not pairs:
            raise ValueError("no captions to score; the caption file contains no records")
        self._check_ground_truth([image_id for image_id, _ in pairs])
        scores = []
        # A bar only for long runs, and only on a terminal (disable=None); 200 captions take about a second.
        progress = tqdm(pairs, desc="CHAIR", unit="caption", disable=True if len(pairs) < 200 else None, leave=False)
        for image_id, caption in progress:
            scores.append(self._score_caption(image_id, caption))
        return _summarize(scores, self.lemmatizer)

    def _check_ground_truth(self, image_ids: Sequence[int]) -> None:
        missing = sorted({image_id for image_id in image_ids if image_id not in self.gt_objects})
        if missing:
            shown = ", ".join(str(image_id) for image_id in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise MissingGroundTruthError(
                f"{len(missing)} image id(s) of the captions have no ground-truth objects: {shown}{more}; "
                f"score captions against the annotations of the same images"
            )

    def _score_caption(self, image_id: int, caption: str) -> CaptionScore:
        parsed = self.caption_objects(caption)
        truth = self.gt_objects[image_id]
        hallucinated = [mention for mention in parsed.mentions if mention.object not in truth]
        return CaptionScore(
            image_id=image_id,
            caption=caption,
            words=parsed.words,
            generated_objects=tuple(mention.object for mention in parsed.mentions),
            generated_words=tuple(mention.word for mention in parsed.mentions),
            mention_indices=tuple(mention.index for mention in parsed.mentions),
            gt_objects=tuple(sorted(truth)),
            hallucinated_objects=tuple(mention.object for mention in hallucinated),
            hallucinated_words=tuple(mention.word for mention in hallucinated),
            hallucination_indices=tuple(mention.index for mention in hallucinated),
        )


def _summarize(scores: Sequence[CaptionScore], lemmatizer: str) -> ChairReport:
    mentions = sum(len(score.generated_objects) for score in scores)
    hallucinated = sum(len(score.hallucinated_objects) for score in scores)
    gt_total = sum(len(score.gt_objects) for score in scores)
    recalled = sum(len(set(score.generated_objects) & set(score.gt_objects)) for score in scores)
    return ChairReport(
        chair_s=sum(score.hallucinated for score in scores) / len(scores),
        chair_i=hallucinated / mentions if mentions else 0.0,
        recall=recalled / gt_total if gt_total else 0.0,
        len=sum(len(score.words) for score in scores) / len(scores) / 100,
        n=len(scores),
        mentions=mentions,
        hallucinated_mentions=hallucinated,
        lemmatizer=lemmatizer,
        per_caption=tuple(scores),
    )


def _image_id(value: object, what: str) -> int:
    """Return an image id given as an int or a numeric string; raise ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} image id {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{what} image id {value!r} is not an integer or a numeric string")


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(path) for path in paths]
