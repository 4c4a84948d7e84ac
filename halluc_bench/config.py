"""The configuration of one audit run."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CACHE_ENV = "HALLUC_BENCH_CACHE"  # where the toy world and the organism are cached

Profile = Literal["standard", "full"]
PROFILES: tuple[str, ...] = ("standard", "full")
# A quantization setting is "int<bits>-per_channel" or "int<bits>-per_group" (bits from 2 to 8).
QUANTIZATION_PATTERN = re.compile(r"^int([2-8])-(per_channel|per_group)$")


def default_cache_dir() -> Path:
    """Return $HALLUC_BENCH_CACHE, else ``~/.cache/halluc-bench``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "halluc-bench"


@dataclass(frozen=True)
class FullProfileSettings:
    """Settings read only by the full profile: learning-rate grid, collapse rule, attack and probe grids.

    Radii and noise levels are relative to weight norms except ``sharpness_radius``, which is
    an absolute L2 radius like SAM's rho, so that it matches the rho that SARE and NPO+SAM flatten.
    """

    seeds: tuple[int, ...] = ()  # repeats of the whole per-seed audit; empty repeats once with RunConfig.seed
    lr_factors: tuple[float, ...] = (0.3, 1.0, 3.0)  # multipliers of RunConfig.unlearn_learning_rate, one grid for every method
    selection_split: str = "val"  # split whose captions select the learning rate
    selection_caption_images: int | None = None  # None takes RunConfig.caption_images (or the task's count)
    min_recall_share: float = 0.95  # a rate qualifies when its recall is at least this share of the base model's
    collapse_recall_share: float = 0.5  # recall below this share of the base model's counts as collapse
    collapse_retain_rise: float = 1.0  # rise of the retain loss (nats), last vs first steps, that counts as collapse
    relearn_sample_grid: tuple[int, ...] = (4, 64)  # extra attacker sample counts k; RunConfig.relearn_samples is always run
    noise_sigmas: tuple[float, ...] = (0.01, 0.02, 0.05)  # noise standard deviation relative to each tensor's RMS
    noise_draws: int = 3
    worst_case_radii: tuple[float, ...] = (0.002, 0.01)  # L2 radius relative to the norm of the perturbed weights
    worst_case_steps: int = 5  # projected gradient-ascent steps
    quantization: tuple[str, ...] = ("int8-per_channel", "int8-per_group", "int4-per_channel", "int4-per_group")
    quantization_group_size: int = 128  # inputs per scale for per_group settings, the usual choice for LLMs
    probe_examples: int = 32  # fixed hallucinated captions on which the hallucinated-token probability is measured
    hutchpp_sketch: int = 8  # Hutch++ sketch columns
    hutchpp_probes: int = 8  # Hutch++ residual probes
    eigenvalues: int = 1  # top Hessian eigenvalues by Lanczos
    lanczos_iterations: int = 20
    sharpness_radius: float = 0.05  # absolute L2 radius of the epsilon-sharpness ball
    sharpness_steps: int = 5
    surface_points: int = 21  # points of the 1-D loss surface on [-surface_span, surface_span]
    surface_span: float = 1.0
    interpolation_points: int = 11  # points per segment of base -> unlearned -> relearned

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_values()
        for setting in self.quantization:
            if not QUANTIZATION_PATTERN.match(setting):
                raise ValueError(
                    f"invalid quantization setting {setting!r}; use int<bits>-per_channel or int<bits>-per_group "
                    "with bits from 2 to 8, e.g. int4-per_group"
                )
        if len(set(self.quantization)) != len(self.quantization):
            raise ValueError(f"quantization lists a setting twice: {', '.join(self.quantization)}")

    def _check_counts(self) -> None:
        for name in ("noise_draws", "worst_case_steps", "quantization_group_size", "probe_examples", "hutchpp_sketch",
                     "hutchpp_probes", "eigenvalues", "lanczos_iterations", "sharpness_steps"):
            _require_positive_int(self, name)
        if self.selection_caption_images is not None:
            _require_positive_int(self, "selection_caption_images")
        for name in ("surface_points", "interpolation_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")

        if len(set(self.seeds)) != len(self.seeds) or any(not isinstance(s, int) for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers, got {','.join(map(str, self.seeds))}; list each seed once")
        if any(not isinstance(k, int) or k < 1 for k in self.relearn_sample_grid):
            raise ValueError(f"relearn_sample_grid must hold positive sample counts, got {self.relearn_sample_grid!r}")

    def _check_values(self) -> None:
        for name in ("lr_factors", "noise_sigmas", "worst_case_radii"):
            _require_positive_numbers(self, name)
        for name in ("sharpness_radius", "surface_span", "collapse_retain_rise"):
            _require_positive_numbers(self, name, (getattr(self, name),))

        share = self.min_recall_share
        if not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise ValueError(f"min_recall_share must be a share in (0, 1], got {share!r}")
        share = self.collapse_recall_share
        if not (isinstance(share, (int, float)) and 0 <= share <= 1):
            raise ValueError(f"collapse_recall_share must be a share in [0, 1], got {share!r}")


def _require_positive_int(settings: object, name: str) -> None:
    value = getattr(settings, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _require_positive_numbers(settings: object, name: str, values: tuple | None = None) -> None:
    values = getattr(settings, name) if values is None else values
    if not values:
        raise ValueError(f"{name} is empty; give at least one value")
    for value in values:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must hold positive finite numbers, got {value!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} lists a value twice: {values!r}")


def _json_value(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    if dataclasses.is_dataclass(value):
        return {item.name: _json_value(getattr(value, item.name)) for item in dataclasses.fields(value)}
    return value


# Fields that only the full profile reads. A standard run stores none of them, so its stored
# configuration is the same as before the full profile existed and older runs still resume.
FULL_PROFILE_FIELDS = ("profile", "full")


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
    # 1e-5 lowers the organism's CHAIR_i with GradDiff and SARE while recall stays near the base
    # model's; 3e-5 already costs a third of its recall.
    unlearn_learning_rate: float = 1e-5
    relearn_learning_rate: float = 1e-4
    relearn_batch_size: int = 8
    trace_probes: int = 32  # Rademacher probes of the Hutchinson Hessian-trace estimate
    trace_examples: int = 32  # forget examples in the fixed batch the trace is taken on
    pope_images: int | None = None  # images per POPE strategy; None takes the task definition's count
    caption_images: int | None = None  # images captioned for CHAIR; None takes the task definition's count
    mme_images: int | None = None  # images per MME subtask; None takes the task definition's count
    threads: int = 2  # torch CPU threads; fixed so that results are reproducible
    profile: Profile = "standard"  # "full" adds the learning-rate grid, every attack and probe, and correlations
    full: FullProfileSettings = field(default_factory=FullProfileSettings)
    resume: bool = True

    def __post_init__(self) -> None:
        positive = ("unlearn_steps", "unlearn_batch_size", "mine_images", "relearn_samples", "relearn_batch_size",
                    "trace_probes", "trace_examples", "threads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("pope_images", "caption_images", "mme_images"):
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
        if not self.unlearn_learning_rate > 0:
            raise ValueError(f"unlearn_learning_rate must be positive, got {self.unlearn_learning_rate!r}")
        if not self.relearn_learning_rate > 0:
            raise ValueError(f"relearn_learning_rate must be positive, got {self.relearn_learning_rate!r}")
        if self.world is not None and self.checkpoint is None:
            raise ValueError("a custom --world needs a --checkpoint to audit; the organism brings its own toy world")
        self._check_profile()

    def _check_profile(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; valid profiles: {', '.join(PROFILES)}")
        if not isinstance(self.full, FullProfileSettings):
            raise ValueError(f"full must be a FullProfileSettings, got {type(self.full).__name__}")
        if self.profile == "standard" and self.full != FullProfileSettings():
            defaults = FullProfileSettings()
            changed = [item.name for item in dataclasses.fields(self.full)
                       if getattr(self.full, item.name) != getattr(defaults, item.name)]
            raise ValueError(f"full-profile settings ({', '.join(changed)}) apply only to profile 'full'; "
                             "pass --profile full or drop them")

    @property
    def seeds(self) -> tuple[int, ...]:
        """Return the seeds of the repeats: ``full.seeds``, else the run seed alone."""
        return self.full.seeds or (self.seed,)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict; paths become strings. A standard run leaves out the full-profile fields."""
        result = {}
        for item in dataclasses.fields(self):
            if self.profile == "standard" and item.name in FULL_PROFILE_FIELDS:
                continue
            result[item.name] = _json_value(getattr(self, item.name))
        return result

    def result_fields(self) -> dict:
        """Return the settings that decide the numbers (paths and resume excluded), for resume checks."""
        excluded = {"output_dir", "cache_dir", "resume"}
        return {key: value for key, value in self.to_dict().items() if key not in excluded}
