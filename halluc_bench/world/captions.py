"""Caption text of the toy world: a few regular phrasings over a small closed vocabulary.

Captions are lower-case English built from the COCO category names, the palette's colour names
and the grid positions, for example "a red fork on the top left and a blue knife on the bottom
right." `word_tokens` lower-cases text and splits it like the `tokenizers` Whitespace
pre-tokenizer: runs of word characters, or runs of other non-space characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]+")

NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Plurals that the English suffix rules below would get wrong.
_IRREGULAR_PLURALS = {"person": "people", "knife": "knives", "mouse": "mice", "sheep": "sheep",
                      "skis": "skis", "scissors": "scissors", "hair drier": "hair driers"}


@dataclass(frozen=True)
class Mention:
    """One object named in a caption; `hallucinated` marks an object that is not in the image."""

    name: str
    color: str
    position: str
    hallucinated: bool = False


@dataclass(frozen=True)
class Phrasing:
    """A caption pattern: a fixed opening, then one item per mention joined by ", " and " and "."""

    opening: str
    item: str  # placeholders: {article} {color} {name} {position}, or only {quantity} when grouped
    grouped: bool = False  # True merges repeated categories into "two cups"


PHRASINGS: dict[str, Phrasing] = {
    "positions": Phrasing(opening="", item="{article} {color} {name} on the {position}"),
    "there_is": Phrasing(opening="there is", item="{article} {color} {name} on the {position}"),
    "colors": Phrasing(opening="a picture of", item="{article} {color} {name}"),
    "names": Phrasing(opening="a photo of", item="{article} {name}"),
    "counts": Phrasing(opening="a scene with", item="{quantity}", grouped=True),
}


def word_tokens(text: str) -> list[str]:
    """Split text into lower-case words and punctuation runs."""
    return _TOKEN_PATTERN.findall(text.lower())


def article(word: str) -> str:
    """Return "an" before a word that starts with a vowel letter, else "a"."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def plural(name: str) -> str:
    """Return the plural of a COCO category name ("cup" -> "cups", "knife" -> "knives")."""
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    if name.endswith(("s", "sh", "ch", "x", "z")):
        return name + "es"
    if name.endswith("y") and name[-2:-1] not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def quantity_phrase(count: int, name: str) -> str:
    """Return "a cup", "an apple" or "two cups" for a count between 1 and 10."""
    if count == 1:
        return f"{article(name)} {name}"
    if not 2 <= count <= len(NUMBER_WORDS):
        raise ValueError(f"count {count} of {name!r} has no number word; counts 1 to {len(NUMBER_WORDS)} are supported")
    return f"{NUMBER_WORDS[count - 1]} {plural(name)}"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _grouped_items(phrasing: Phrasing, mentions: Sequence[Mention]) -> list[str]:
    counts: dict[str, int] = {}
    for mention in mentions:
        counts[mention.name] = counts.get(mention.name, 0) + 1
    return [phrasing.item.format(quantity=quantity_phrase(count, name)) for name, count in counts.items()]


def render_caption(phrasing_name: str, mentions: Sequence[Mention]) -> str:
    """Write one caption that names every mention in order, ending with a full stop."""
    if not mentions:
        raise ValueError("a caption needs at least one mention")
    phrasing = PHRASINGS[phrasing_name]
    if phrasing.grouped:
        items = _grouped_items(phrasing, mentions)
    else:
        items = []
        for mention in mentions:
            first_word = mention.color if "{color}" in phrasing.item else mention.name
            items.append(phrasing.item.format(article=article(first_word), color=mention.color,
                                              name=mention.name, position=mention.position))
    body = _join(items)
    return f"{phrasing.opening} {body}." if phrasing.opening else f"{body}."


def caption_vocabulary(categories: Iterable[str], colors: Iterable[str], positions: Iterable[str]) -> set[str]:
    """Return every word token that `render_caption` can produce for these names."""
    words: set[str] = {"a", "an", "and", ",", "."}
    for phrasing in PHRASINGS.values():
        words.update(word_tokens(phrasing.opening))
        words.update(word_tokens(re.sub(r"\{\w+\}", " ", phrasing.item)))
    words.update(NUMBER_WORDS)
    for name in categories:
        words.update(word_tokens(name))
        words.update(word_tokens(plural(name)))
    for text in (*colors, *positions):
        words.update(word_tokens(text))
    return words
