"""Atomic file writes and COCO JSON reading with errors that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temporary file in the same folder, then move it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write compact, key-order-preserving JSON atomically (same input, same bytes)."""
    write_bytes_atomic(path, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def read_json(path: Path, expected: str) -> Any:
    """Load a JSON file; a missing or malformed file raises an error naming it and `expected`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; expected {expected} there")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}:{error.lineno}: invalid JSON ({error.msg} at column {error.colno}); "
            f"expected {expected}: re-download or regenerate the file"
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); expected {expected}"
        ) from None
