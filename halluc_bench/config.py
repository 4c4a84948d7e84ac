"""The configuration of one audit run."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ENV = "HALLUC_BENCH_CACHE"  # where the toy world and the organism are cached


def default_cache_dir() -> Path:
    """Return $HALLUC_BENCH_CACHE, else ``~/.cache/halluc-bench``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "halluc-bench"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the numbers of one audit; stored with its results."""

    seed: int = 0
    output_dir: Path = Path("runs/default")
    cache_dir: Path = field(default_factory=default_cache_dir)
    checkpoint: Path | None = None  # a local HF checkpoint; None audits the built-in organism
    world: Path | None = None  # a COCO-format folder; None uses the organism's toy world
    eval_split: str = "test"
    mine_split: str = "train"
    methods: tuple[str, ...] = ("graddiff", "sare")
    unlearn_steps: int = 60  # optimizer steps, the same budget for every method
    unlearn_batch_size: int = 16  # forget and retain examples per step
    mine_images: int = 800  # training images captioned to mine forget and retain spans
    relearn_samples: int = 16  # k hallucinated captions the attacker fine-tunes on
    relearn_steps: tuple[int, ...] = (5, 10, 20, 40)  # optimizer steps s at which the attack is evaluated
    relearn_learning_rate: float = 1e-3
    relearn_batch_size: int = 8
    trace_probes: int = 32  # Rademacher probes of the Hutchinson Hessian-trace estimate
    trace_examples: int = 32  # forget examples in the fixed batch the trace is taken on
    pope_images: int | None = None  # images per POPE strategy; None takes the task definition's count
    caption_images: int | None = None  # images captioned for CHAIR; None takes the task definition's count
    threads: int = 2  # torch CPU threads; fixed so that results are reproducible
    resume: bool = True

    def __post_init__(self) -> None:
        positive = ("unlearn_steps", "unlearn_batch_size", "mine_images", "relearn_samples", "relearn_batch_size",
                    "trace_probes", "trace_examples", "threads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("pope_images", "caption_images"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not self.methods:
            raise ValueError("methods is empty; name at least one unlearning method")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a name twice: {', '.join(self.methods)}")
        if not self.relearn_steps or any(s < 1 for s in self.relearn_steps):
            raise ValueError(f"relearn_steps must be positive step counts, got {self.relearn_steps!r}")
        if list(self.relearn_steps) != sorted(set(self.relearn_steps)):
            raise ValueError(f"relearn_steps must be strictly increasing, got {self.relearn_steps!r}")
        if not self.relearn_learning_rate > 0:
            raise ValueError(f"relearn_learning_rate must be positive, got {self.relearn_learning_rate!r}")
        if self.world is not None and self.checkpoint is None:
            raise ValueError("a custom --world needs a --checkpoint to audit; the organism brings its own toy world")

    def to_dict(self) -> dict:
        """Return a JSON-ready dict; paths become strings."""
        result = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            result[item.name] = value
        return result

    def result_fields(self) -> dict:
        """Return the settings that decide the numbers (paths and resume excluded), for resume checks."""
        excluded = {"output_dir", "cache_dir", "resume"}
        return {key: value for key, value in self.to_dict().items() if key not in excluded}
