"""WordNet 3.0 lemmatization that needs no NLTK corpus download.

``WordNetMorphology.lemmatize`` returns what NLTK's ``WordNetLemmatizer.lemmatize`` (NLTK
3.9 and later) returns with the WordNet 3.0 corpus. It looks the word up in the exception
list of its part of speech, or else strips each inflectional suffix that the detachment
rules below name. Of the candidates (the word itself first) that WordNet lists as lemmas
of that part of speech, it returns the shortest, the earliest on a tie. A word without
candidates is returned unchanged.

The lemma index and exception lists come from the WordNet 3.0 database (Princeton
University, WordNet 3.0 licence, see ``halluc_bench/data/chair/WORDNET_LICENSE``). They are
shipped in ``halluc_bench/data/chair/wordnet30_morphy.json.gz``, which this module's
``build`` command derives from the database's ``index.*`` and ``*.exc`` files:

    python -m halluc_bench.tasks.chair_wordnet build --wordnet-dir /usr/share/wordnet

(Debian's ``wordnet-base`` package installs the database in ``/usr/share/wordnet``.)
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, Mapping, Sequence

logger = logging.getLogger(__name__)

PartOfSpeech = Literal["n", "v", "a", "r"]
PARTS_OF_SPEECH: tuple[PartOfSpeech, ...] = ("n", "v", "a", "r")

DATA_FILE = "wordnet30_morphy.json.gz"
DATA_FORMAT = 1

# Suffix detachment rules, tried in this order: WordNet's morphy rules plus the "-ves" -> "-f"
# noun rule that NLTK adds. Adverbs are never inflected.
DETACHMENT_RULES: Mapping[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"),
          ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}

# WordNet database file names per part of speech.
_FILE_STEMS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


@dataclass(frozen=True)
class WordNetMorphology:
    """The WordNet lemma index and exception lists that morphological lookup needs."""

    lemmas: Mapping[str, frozenset[str]]  # part of speech -> lemmas of that part of speech
    exceptions: Mapping[str, Mapping[str, tuple[str, ...]]]  # part of speech -> inflected form -> base forms

    def __post_init__(self) -> None:
        for pos in PARTS_OF_SPEECH:
            if pos not in self.lemmas or pos not in self.exceptions:
                raise ValueError(f"WordNet data lacks part of speech {pos!r}; rebuild it with the 'build' command")

    def candidates(self, form: str, pos: PartOfSpeech) -> list[str]:
        """Return the lemmas of ``form`` for ``pos`` in lookup order: the form itself, then exceptions or suffix rules."""
        if pos not in self.lemmas:
            raise ValueError(f"unknown part of speech {pos!r}; valid: {', '.join(PARTS_OF_SPEECH)}")
        exceptions = self.exceptions[pos]
        if form in exceptions:
            forms = list(exceptions[form])
        else:
            forms = [form[: len(form) - len(old)] + new for old, new in DETACHMENT_RULES[pos] if form.endswith(old)]
        known = self.lemmas[pos]
        found: list[str] = []
        for candidate in [form, *forms]:
            if candidate in known and candidate not in found:
                found.append(candidate)
        return found

    def lemmatize(self, word: str, pos: PartOfSpeech = "n") -> str:
        """Return the shortest WordNet lemma of ``word`` as ``pos``, or ``word`` itself when WordNet has none."""
        found = self.candidates(word, pos)
        if not found:
            return word
        return min(found, key=len)


@functools.cache
def load_wordnet_morphology(path: str | None = None) -> WordNetMorphology:
    """Load the shipped WordNet 3.0 lemma data (or the file at ``path``); the result is cached per path."""
    if path is None:
        source = resources.files("halluc_bench").joinpath("data", "chair", DATA_FILE)
        with source.open("rb") as stream:
            raw = stream.read()
        where = f"halluc_bench/data/chair/{DATA_FILE}"
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"WordNet data file not found: {path}")
        raw = Path(path).read_bytes()
        where = path
    try:
        payload = json.loads(gzip.decompress(raw).decode("utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{where} is not a gzipped WordNet data file ({error}); rebuild it with the 'build' command") from error
    if payload.get("format") != DATA_FORMAT:
        raise ValueError(f"{where} has format {payload.get('format')!r}, expected {DATA_FORMAT}; rebuild it")
    lemmas = {pos: frozenset(payload["lemmas"][pos].split("\n")) for pos in PARTS_OF_SPEECH}
    exceptions = {
        pos: {form: tuple(bases) for form, bases in payload["exceptions"][pos].items()} for pos in PARTS_OF_SPEECH
    }
    logger.debug("loaded WordNet lemma data from %s", where)
    return WordNetMorphology(lemmas=lemmas, exceptions=exceptions)


def read_wordnet_database(wordnet_dir: str | os.PathLike[str]) -> WordNetMorphology:
    """Read the lemma index (``index.noun`` ...) and exception lists (``noun.exc`` ...) of a WordNet database folder."""
    folder = Path(wordnet_dir)
    lemmas: dict[str, frozenset[str]] = {}
    exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
    for pos, stem in _FILE_STEMS.items():
        index_path = folder / f"index.{stem}"
        exception_path = folder / f"{stem}.exc"
        for required in (index_path, exception_path):
            if not required.is_file():
                raise FileNotFoundError(f"WordNet file not found: {required}; pass the folder that contains index.noun")
        # Index lines start with the lemma; lines starting with a space are the licence header.
        with index_path.open(encoding="utf-8") as stream:
            lemmas[pos] = frozenset(line.split(" ", 1)[0] for line in stream if line.strip() and not line.startswith(" "))
        table: dict[str, tuple[str, ...]] = {}
        with exception_path.open(encoding="utf-8") as stream:
            for line in stream:
                fields = line.split()
                if len(fields) >= 2:
                    table[fields[0]] = tuple(fields[1:])
        exceptions[pos] = table
    return WordNetMorphology(lemmas=lemmas, exceptions=exceptions)


def write_morphology_data(morphology: WordNetMorphology, output: str | os.PathLike[str]) -> Path:
    """Write ``morphology`` as the gzipped JSON data file, atomically; the bytes depend only on the data."""
    payload = {
        "format": DATA_FORMAT,
        "source": "WordNet 3.0 (Princeton University), index.* and *.exc files; WordNet 3.0 licence",
        "lemmas": {pos: "\n".join(sorted(morphology.lemmas[pos])) for pos in PARTS_OF_SPEECH},
        "exceptions": {pos: dict(sorted((form, list(bases)) for form, bases in morphology.exceptions[pos].items()))
                       for pos in PARTS_OF_SPEECH},
    }
    data = gzip.compress(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8"), compresslevel=9, mtime=0)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates the file private; package data must be readable
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the shipped WordNet lemma data file from a WordNet 3.0 database folder."""
    parser = argparse.ArgumentParser(prog="python -m halluc_bench.tasks.chair_wordnet", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="derive the lemma data file from a WordNet database folder")
    build.add_argument("--wordnet-dir", required=True, help="folder with index.noun, noun.exc, ... (WordNet 3.0)")
    default_output = Path(__file__).resolve().parent.parent / "data" / "chair" / DATA_FILE
    build.add_argument("--output", default=str(default_output), help=f"file to write (default: {default_output})")
    args = parser.parse_args(argv)
    morphology = read_wordnet_database(args.wordnet_dir)
    path = write_morphology_data(morphology, args.output)
    counts = ", ".join(f"{pos}: {len(morphology.lemmas[pos])} lemmas" for pos in PARTS_OF_SPEECH)
    print(f"wrote {path} ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
