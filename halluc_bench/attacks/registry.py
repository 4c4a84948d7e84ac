"""The attack registry: built-in attacks register by decorator, third-party ones by entry point."""

from __future__ import annotations

from typing import Callable

from halluc_bench.registry import Registry

# Every registered attack takes a VisionLanguageModel first and returns new models built from
# deep copies; the input model is never changed.
ATTACKS: Registry[Callable] = Registry("attack", "halluc_bench.attacks")
