"""Declarative, versioned task definitions read from YAML files in the ``tasks/`` folder.

A task definition fixes the prompts and scoring settings of a task. Every leaderboard row
records the versions it was computed with, and a scoring change bumps the version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TASKS_ENV = "HALLUC_BENCH_TASKS"  # a folder of task YAML files that replaces the built-in one
REQUIRED_KEYS = ("name", "version")


@dataclass(frozen=True)
class TaskDefinition:
    """One task's settings as read from its YAML file."""

    name: str
    version: int
    settings: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.settings:
            raise KeyError(f"task {self.name!r} ({self.source}) has no setting {key!r}; found: {', '.join(sorted(self.settings))}")
        return self.settings[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


def tasks_dir() -> Path:
    """Return the folder of task definitions: $HALLUC_BENCH_TASKS, else ``tasks/`` in the source tree."""
    configured = os.environ.get(TASKS_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "tasks"


def load_task_definition(name: str, directory: Path | None = None) -> TaskDefinition:
    """Read and validate ``<directory>/<name>.yaml``."""
    folder = directory or tasks_dir()
    path = folder / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"task definition {path} not found; available in {folder}: {', '.join(available) or '(none)'}; "
            f"set {TASKS_ENV} to a folder of task YAML files"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"task definition {path} is not valid YAML{where}: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"task definition {path} must be a mapping of settings, got {type(raw).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ValueError(f"task definition {path} lacks required key(s) {', '.join(missing)}")
    if raw["name"] != name:
        raise ValueError(f"task definition {path} is named {raw['name']!r}; rename the file or the name to match")
    version = raw["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"task definition {path} has version {version!r}; use a positive integer")
    settings = {key: value for key, value in raw.items() if key not in REQUIRED_KEYS}
    return TaskDefinition(name=name, version=version, settings=settings, source=path)
