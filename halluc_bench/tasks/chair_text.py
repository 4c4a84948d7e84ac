"""Caption text processing for CHAIR: tokens with character spans, and their lemmas.

The reference CHAIR script lower-cases a caption and splits it with ``nltk.word_tokenize``
(Punkt sentence splitting, then the Treebank-style word tokenizer on each sentence). Two
lemmatizers are registered in ``CHAIR_LEMMATIZERS``:

- ``wordnet``: tag the caption's tokens with an averaged-perceptron part-of-speech tagger,
  then reduce each token with WordNet 3.0 morphology for its tag (adjective for J*, verb
  for V*, adverb for R*, noun otherwise). This is the variant most papers report. As in
  the reference, "men" stays "men": WordNet lists both "men" and "man" as nouns, and the
  lemmatizer keeps the earlier of the two equally short lemmas, so "men" names no object.
- ``pattern``: singularize every token with the rules of the ``pattern`` library (its
  ``singularize``, which TextBlob ships as ``textblob.en.inflect``). This is the variant of
  the original CHAIR code.

Everything here runs offline: NLTK's tokenizers need no data files when the Punkt sentence
splitter is built here, the WordNet data ships with this package, and the tagger weights
come with the ``textblob-aptagger`` package.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import pickle
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Literal, Sequence

from nltk.tag.perceptron import PerceptronTagger
from nltk.tokenize import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

from halluc_bench.registry import Registry
from halluc_bench.tasks.chair_wordnet import PartOfSpeech, load_wordnet_morphology

logger = logging.getLogger(__name__)

Lemmatizer = Literal["wordnet", "pattern"]

CHAIR_LEMMATIZERS: Registry[Callable[[Sequence[str]], list[str]]] = Registry("CHAIR lemmatizer")

# Abbreviations whose final period does not end a sentence (lower case, without that period).
# NOTE: the reference splits sentences with NLTK's trained English Punkt model, which is not
# available offline. This short list covers the abbreviations seen in image captions, so a
# caption with a rarer abbreviation may get one token more or fewer than the reference.
SENTENCE_ABBREVIATIONS = frozenset({"u.s", "u.k", "mr", "mrs", "ms", "dr", "st", "vs", "e.g", "i.e", "etc"})

# Tagger weights: the model file of textblob-aptagger 0.2.0 (MIT licence, Matthew Honnibal).
# NLTK's perceptron tagger is a port of that tagger, with the same features, so NLTK runs
# this model as it runs its own. NOTE: the reference used NLTK's own English model, which
# cannot be fetched offline. The two models tag some words differently in context: on 1,000
# LLaVA captions 0.55% of the reference's lemmas differ, and 2.6% of captions get a
# different object list.
TAGGER_DISTRIBUTION = "textblob-aptagger"
TAGGER_FILE = "trontagger-0.1.0.pickle"
TAGGER_SHA256 = "1109164b3d28dce58f96b763128bab2fd8754c3921fd3330de2724ac6d1ada7c"

# Tags fixed for single words, as the reference tagger assigns them. NLTK's English model
# tags "potted" (in "potted plant") as an adjective in 46 of 49 LLaVA captions, while the
# textblob-aptagger model tags it as a past participle, which would lemmatize it to "pot"
# and split the COCO object "potted plant".
PINNED_TAGS = {"potted": "JJ"}

_WORDNET_POS = {"J": "a", "V": "v", "R": "r", "N": "n"}


@dataclass(frozen=True)
class Token:
    """One token of a caption: its lower-cased text and its character span in the original caption."""

    text: str
    start: int
    end: int


def tokenize_caption(caption: str) -> list[Token]:
    """Lower-case and tokenize a caption as ``nltk.word_tokenize(caption.lower())`` does, keeping character spans.

    A span covers the token's characters in ``caption`` itself. A token that the tokenizer
    rewrote (a double quote becomes `````` or ``''``) spans the characters it came from.
    A token that cannot be found in the text (not seen in practice) gets an empty span at
    the current position.
    """
    lowered, origin = _lower_with_origin(caption)
    tokens: list[Token] = []
    word_tokenizer = NLTKWordTokenizer()
    for sentence_start, sentence_end in _sentence_splitter().span_tokenize(lowered):
        sentence = lowered[sentence_start:sentence_end]
        words = word_tokenizer.tokenize(sentence)
        for word, (start, end) in zip(words, _align(words, sentence)):
            tokens.append(Token(word, *_map_span(origin, sentence_start + start, sentence_start + end)))
    return tokens


def lemmatize_tokens(words: Sequence[str], lemmatizer: Lemmatizer | str = "wordnet") -> list[str]:
    """Return the lemma of each token of one caption with the named lemmatizer ("wordnet" or "pattern")."""
    return CHAIR_LEMMATIZERS.get(lemmatizer)(words)


def validate_lemmatizer(name: str) -> Lemmatizer:
    """Return ``name`` if it is a registered lemmatizer; else raise a ``KeyError`` that lists the valid names."""
    CHAIR_LEMMATIZERS.get(name)
    return name  # type: ignore[return-value]


@CHAIR_LEMMATIZERS.register("wordnet")
def lemmatize_wordnet(words: Sequence[str]) -> list[str]:
    """Tag the tokens of one caption, then reduce each to its WordNet lemma for that tag."""
    tagger = load_pos_tagger()
    morphology = load_wordnet_morphology()
    tagged = tagger.tag(list(words))
    lemmas = []
    for word, tag in tagged:
        pos: PartOfSpeech = _WORDNET_POS.get(tag[:1], "n")  # type: ignore[assignment]
        lemmas.append(morphology.lemmatize(word, pos))
    return lemmas


@CHAIR_LEMMATIZERS.register("pattern")
def lemmatize_pattern(words: Sequence[str]) -> list[str]:
    """Singularize every token with pattern's rules, whatever its part of speech."""
    return [singularize_pattern(word) for word in words]


# TextBlob 0.20 ships pattern's singularize word lists with a few additions. These sets undo
# them, so that the lists below are those of pattern 3.6, which the original CHAIR code uses.
_TEXTBLOB_ONLY_UNINFLECTED = frozenset({"aircraft", "antelope", "cattle", "jeans", "moose", "offspring"})
_TEXTBLOB_ONLY_UNCOUNTABLE = frozenset({"cannabis"})
_TEXTBLOB_ONLY_IE = frozenset({"bookie"})
_TEXTBLOB_ONLY_IRREGULAR = frozenset({"lynxes"})
_PATTERN_ONLY_UNINFLECTED = frozenset({"christmas"})


def singularize_pattern(word: str) -> str:
    """Return the singular of ``word`` as pattern 3.6's ``singularize`` does, quirks included.

    The steps run in this order. A hyphenated compound whose second part is a preposition
    ("mothers-in-law") singularizes its first part. A word ending in an apostrophe becomes
    the singular plus "'s". A word that ends an uninflected or uncountable word ("is" ends
    "debris") is returned unchanged. Then come the "-ie" words, the irregular plurals, and
    the first matching suffix rule. The word lists and suffix rules are read from TextBlob's
    copy of pattern's module.
    """
    tables = _pattern_tables()
    if "-" in word:
        parts = word.split("-")
        if len(parts) > 1 and parts[1] in tables.prepositions:
            return singularize_pattern(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):
        return singularize_pattern(word[:-1]) + "'s"
    lower = word.lower()
    if any(entry.endswith(lower) for entry in tables.unchanged):
        return word
    for base in tables.ie_words:
        if lower.endswith(base + "s"):
            return lower
    for plural, singular in tables.irregular:
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", singular, word)
    for rule, replacement in tables.rules:
        match = rule.search(word)
        if match:
            for number, group in enumerate(match.groups(), start=1):
                if group is None:
                    replacement = replacement.replace("\\" + str(number), "")
            return rule.sub(replacement, word)
    return word


@dataclass(frozen=True)
class _PatternTables:
    prepositions: frozenset[str]
    unchanged: tuple[str, ...]  # uninflected and uncountable words
    ie_words: tuple[str, ...]
    irregular: tuple[tuple[str, str], ...]
    rules: tuple[tuple[re.Pattern[str], str], ...]


@functools.cache
def _pattern_tables() -> _PatternTables:
    from textblob.en import inflect  # imported here: TextBlob takes about a second to import

    uninflected = (set(inflect.singular_uninflected) - _TEXTBLOB_ONLY_UNINFLECTED) | _PATTERN_ONLY_UNINFLECTED
    uncountable = set(inflect.singular_uncountable) - _TEXTBLOB_ONLY_UNCOUNTABLE
    return _PatternTables(
        prepositions=frozenset(inflect.plural_prepositions),
        unchanged=tuple(sorted(uninflected)) + tuple(sorted(uncountable)),
        ie_words=tuple(sorted(set(inflect.singular_ie) - _TEXTBLOB_ONLY_IE)),
        irregular=tuple((plural, singular) for plural, singular in inflect.singular_irregular.items()
                        if plural not in _TEXTBLOB_ONLY_IRREGULAR),
        rules=tuple((rule, replacement) for rule, replacement in inflect.singular_rules),
    )


@functools.cache
def load_pos_tagger() -> PerceptronTagger:
    """Return NLTK's perceptron tagger loaded with the textblob-aptagger model (checked by SHA-256)."""
    try:
        files = metadata.files(TAGGER_DISTRIBUTION) or []
    except metadata.PackageNotFoundError as error:
        raise ModuleNotFoundError(
            f"the WordNet CHAIR lemmatizer needs the {TAGGER_DISTRIBUTION} package for its tagger weights; "
            f"install it with: pip install {TAGGER_DISTRIBUTION}==0.2.0"
        ) from error
    matches = [entry for entry in files if entry.name == TAGGER_FILE]
    if not matches:
        raise FileNotFoundError(f"{TAGGER_FILE} is missing from the installed {TAGGER_DISTRIBUTION}; reinstall it")
    path = Path(matches[0].locate())
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TAGGER_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {TAGGER_SHA256}; install {TAGGER_DISTRIBUTION}==0.2.0")
    weights, tag_dictionary, classes = _DictUnpickler(raw).load()
    tagger = PerceptronTagger(load=False)
    tagger.model.weights = weights
    tagger.model.classes = classes
    tagger.classes = classes
    tagger.tagdict = {**tag_dictionary, **PINNED_TAGS}
    logger.debug("loaded the POS tagger model from %s", path)
    return tagger


class _DictUnpickler(pickle.Unpickler):
    """Unpickle the tagger model, which holds only dicts, sets, strings and floats; any other class is rejected."""

    def __init__(self, raw: bytes):
        super().__init__(io.BytesIO(raw), encoding="latin1")  # a Python 2 pickle

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in {("__builtin__", "set"), ("builtins", "set")}:
            return set
        raise pickle.UnpicklingError(f"invalid tagger model: it refers to {module}.{name}; reinstall {TAGGER_DISTRIBUTION}")


@functools.cache
def _sentence_splitter() -> PunktSentenceTokenizer:
    parameters = PunktParameters()
    parameters.abbrev_types = set(SENTENCE_ABBREVIATIONS)
    return PunktSentenceTokenizer(parameters)


def _lower_with_origin(text: str) -> tuple[str, list[int] | None]:
    """Lower-case ``text``; when that changes its length, also map each lowered character to its source index."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    origin = [index for index, character in enumerate(text) for _ in character.lower()]
    if len(origin) != len(lowered):  # context-dependent lower-casing; fall back to a proportional map
        origin = [min(len(text) - 1, index * len(text) // max(1, len(lowered))) for index in range(len(lowered))]
    return lowered, origin


def _map_span(origin: list[int] | None, start: int, end: int) -> tuple[int, int]:
    """Map a span of the lowered text back to the original text."""
    if origin is None:
        return start, end
    if start >= len(origin):
        return origin[-1] + 1, origin[-1] + 1
    if end <= start:
        return origin[start], origin[start]
    return origin[start], origin[end - 1] + 1


def _align(words: Sequence[str], text: str) -> list[tuple[int, int]]:
    """Find each token in ``text`` left to right; a quote token may stand for any of the quote spellings."""
    spans = []
    position = 0
    for word in words:
        variants = ['"', "``", "''"] if word in {'"', "``", "''"} else [word]
        best: tuple[int, int] | None = None
        for variant in variants:
            found = text.find(variant, position)
            if found >= 0 and (best is None or found < best[0]):
                best = (found, found + len(variant))
        if best is None:
            best = (position, position)
        spans.append(best)
        position = best[1]
    return spans
