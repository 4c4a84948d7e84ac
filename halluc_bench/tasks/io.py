"""Readers and writers for the record files that benchmark tools exchange.

Real question, answer and caption files come in several layouts that all hold a list of
JSON objects: JSON Lines, one JSON array, a ``.jsonl`` file that is a single JSON object,
and JSON objects pretty-printed one after another. Any of them may carry a UTF-8 byte-order
mark or CRLF line endings. ``read_records`` accepts all of them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)


class RecordFileError(ValueError):
    """A record file that cannot be parsed; the message names the file and line."""


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file, dropping a byte-order mark and turning CRLF and CR into LF."""
    path = Path(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"file not found: {path}{where}; check the path")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise RecordFileError(f"{path}:{line}: invalid UTF-8 ({error.reason}); save the file as UTF-8") from error
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a file of JSON objects in any common layout and return them in file order.

    Accepted layouts: JSON Lines (blank lines skipped), a JSON array of objects, a single
    JSON object (returned as a one-element list), and JSON objects written one after another
    with any whitespace between them. A file that is empty or whitespace only gives ``[]``.
    Raises ``RecordFileError`` naming the file and line of the first malformed record.
    """
    path = Path(path)
    text = read_text(path)
    stripped = text.lstrip()
    if not stripped:
        logger.warning("%s is empty, so it contains no records", path)
        return []
    if stripped.startswith("["):
        return _read_array(path, text)

    lines = text.split("\n")
    records, bad_line, bad_error = _read_json_lines(lines)
    if bad_line is None:
        return _check_objects(path, records)
    # A line that fails on its own may still be part of a pretty-printed object, so try the
    # file as objects written one after another. When that fails too and the first line was a
    # whole object, the file is JSON Lines with one bad line: report that line.
    try:
        return _check_objects(path, _read_concatenated(path, text))
    except RecordFileError:
        if bad_line == 1:
            raise
    raise RecordFileError(f"{path}:{bad_line}: invalid JSON ({bad_error}); fix or remove that line")


def _read_array(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordFileError(f"{path}:{error.lineno}: invalid JSON array ({error.msg})") from error
    if not isinstance(value, list):
        raise RecordFileError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    return _check_objects(path, value)


def _read_json_lines(lines: list[str]) -> tuple[list[Any], int | None, str]:
    """Parse each non-blank line; return the values, and the 1-based number and message of the first bad line."""
    records: list[Any] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            return records, number, error.msg
    return records, None, ""


def _read_concatenated(path: Path, text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    records: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return records
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise RecordFileError(f"{path}:{error.lineno}: invalid JSON ({error.msg}); fix the record that starts near that line") from error
        records.append(value)


def _check_objects(path: Path, values: list[Any]) -> list[dict[str, Any]]:
    for index, value in enumerate(values, start=1):
        if not isinstance(value, dict):
            raise RecordFileError(f"{path}: record {index} is a JSON {type(value).__name__}, expected an object")
    return values


def write_jsonl_atomic(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as JSON Lines through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
