"""Run directories: configuration, one JSON record per finished cell, written atomically.

A long audit is a grid of cells (model x stage x attack setting). Each finished cell is
stored as its own file, so an interrupted run resumes by skipping the cells it finds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# mkstemp creates files readable by the owner only; results are meant to be shared.
RESULT_FILE_MODE = 0o644
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*$")


class OutputDirError(OSError):
    """An output directory that cannot be created or written."""


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True, allow_nan=True)
            stream.write("\n")
        os.chmod(temporary, RESULT_FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, RESULT_FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def ensure_writable_dir(path: str | os.PathLike, option: str = "--output-dir") -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Raises OutputDirError with a one-line message naming the directory and the option to change.
    """
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputDirError(
            f"output directory {directory} is not writable ({reason}); pass a writable directory with {option}"
        ) from error
    return directory


class RunDirectory:
    """A run's folder: ``config.json``, ``records/<key>.json`` per finished cell, and artefacts."""

    def __init__(self, root: str | os.PathLike):
        self.root = ensure_writable_dir(root)
        self.records_dir = self.root / "records"

    def check_config(self, config: dict) -> bool:
        """Return whether the run directory already stores ``config``; a different stored configuration is an error."""
        path = self.root / "config.json"
        if not path.exists():
            return False
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != json.loads(json.dumps(config)):
            changed = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
            raise ValueError(
                f"run directory {self.root} contains a run with a different configuration (differs in: "
                f"{', '.join(changed)}); pass another --output-dir or --no-resume to start over"
            )
        return True

    def write_config(self, config: dict) -> None:
        """Store the run configuration, replacing any stored one (call :meth:`check_config` first to resume)."""
        write_json_atomic(self.root / "config.json", config)

    def _record_path(self, key: str) -> Path:
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"invalid record key {key!r}: use letters, digits and ._=+- separated by /")
        return self.records_dir / f"{key}.json"

    def has(self, key: str) -> bool:
        return self._record_path(key).is_file()

    def get(self, key: str) -> dict:
        path = self._record_path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"record {path} is corrupt ({error.msg} at line {error.lineno}); delete it so that the cell is recomputed"
            ) from error

    def put(self, key: str, record: dict) -> None:
        write_json_atomic(self._record_path(key), record)

    def records(self) -> dict[str, dict]:
        """Return every stored record by key."""
        found = {}
        for path in sorted(self.records_dir.rglob("*.json")):
            key = path.relative_to(self.records_dir).with_suffix("").as_posix()
            found[key] = self.get(key)
        return found

    def clear(self) -> None:
        """Remove every stored record (used when a run is restarted without resuming)."""
        for path in self.records_dir.rglob("*.json"):
            path.unlink()
