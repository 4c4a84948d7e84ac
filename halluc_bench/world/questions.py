"""Question templates for yes/no probing (POPE style) and MME-style perception subtasks."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

from .captions import NUMBER_WORDS, plural, word_tokens

# POPE's template; "{article}" becomes "an" before a vowel.
POPE_TEMPLATE = "Is there {article} {object} in the image?"

DEFAULT_MME_TEMPLATES: dict[str, str] = {
    "existence": "Is there {article} {object} in the image? Please answer yes or no.",
    "count": "Are there {number} {objects} in the image? Please answer yes or no.",
    "count_one": "Is there only one {object} in the image? Please answer yes or no.",
    "position": "Is the {object} {relation} the {other}? Please answer yes or no.",
    "color": "Is the {object} {color}? Please answer yes or no.",
}

# Placeholders each template may use, and the ones it must use to be answerable.
_ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    "existence": frozenset({"article", "object"}),
    "count": frozenset({"number", "objects"}),
    "count_one": frozenset({"article", "object"}),
    "position": frozenset({"object", "relation", "other"}),
    "color": frozenset({"article", "object", "color"}),
}
_REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    "existence": frozenset({"object"}),
    "count": frozenset({"number", "objects"}),
    "count_one": frozenset({"object"}),
    "position": frozenset({"object", "relation", "other"}),
    "color": frozenset({"object", "color"}),
}

# Spatial relation of object A to object B -> its wording and the opposite relation.
RELATIONS: dict[str, str] = {"left": "on the left of", "right": "on the right of", "above": "above", "below": "below"}
OPPOSITE_RELATION: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}

ANSWER_WORDS: tuple[str, ...] = ("yes", "no")


def template_fields(template: str) -> set[str]:
    """Return the placeholder names of a str.format template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def validate_template(key: str, template: str, allowed: frozenset[str], required: frozenset[str]) -> None:
    """Raise ValueError when a template uses an unknown placeholder or lacks a required one."""
    try:
        found = template_fields(template)
    except ValueError as error:
        raise ValueError(f"question template {key!r} is not a valid format string ({error}): {template!r}") from None
    unknown = sorted(found - allowed)
    missing = sorted(required - found)
    if unknown or missing:
        raise ValueError(
            f"question template {key!r} = {template!r}: unknown placeholders {unknown}, missing {missing}; "
            f"allowed placeholders are {sorted(allowed)}"
        )


def resolve_mme_templates(templates: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the MME templates with `templates` overriding the defaults, after validation."""
    resolved = dict(DEFAULT_MME_TEMPLATES)
    for key, template in (templates or {}).items():
        if key not in DEFAULT_MME_TEMPLATES:
            raise ValueError(f"unknown MME template key {key!r}; valid keys: {', '.join(DEFAULT_MME_TEMPLATES)}")
        if not isinstance(template, str):
            raise ValueError(f"MME template {key!r} must be a string, got {type(template).__name__}")
        resolved[key] = template
    for key, template in resolved.items():
        validate_template(key, template, _ALLOWED_FIELDS[key], _REQUIRED_FIELDS[key])
    return resolved


def validate_pope_template(template: str) -> None:
    validate_template("yes/no", template, _ALLOWED_FIELDS["existence"], _REQUIRED_FIELDS["existence"])


def _literal_words(template: str) -> set[str]:
    return set(word_tokens(re.sub(r"\{\w*\}", " ", template)))


def question_vocabulary(
    categories: Iterable[str],
    colors: Iterable[str],
    mme_templates: Mapping[str, str] | None = None,
    pope_template: str = POPE_TEMPLATE,
) -> set[str]:
    """Return every word token the yes/no and MME questions (and their answers) can contain."""
    words: set[str] = {"a", "an", *ANSWER_WORDS, *NUMBER_WORDS}
    for template in (*resolve_mme_templates(mme_templates).values(), pope_template):
        words.update(_literal_words(template))
    for phrase in RELATIONS.values():
        words.update(word_tokens(phrase))
    for name in categories:
        words.update(word_tokens(name))
        words.update(word_tokens(plural(name)))
    for color in colors:
        words.update(word_tokens(color))
    return words
