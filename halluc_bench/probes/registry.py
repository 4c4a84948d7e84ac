"""The probe registry: built-in probes register by decorator, third-party ones by entry point."""

from __future__ import annotations

from typing import Callable

from halluc_bench.registry import Registry

# Every registered probe is called as probe(model, loss_fn, params=None, *, generator, **options).
PROBES: Registry[Callable] = Registry("probe", "halluc_bench.probes")
