"""The ``Unlearner`` plug-in API: configuration, hooks, results and the method registry.

A method is a small subclass of :class:`Unlearner` that overrides one hook: ``loss`` for
methods that minimise a plain objective, or ``step`` for methods that change the update
itself (the sharpness-aware ones). Built-in methods register with ``@UNLEARNERS.register``;
third-party packages declare an entry point in the group ``halluc_bench.unlearners``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from halluc_bench.models.vlm import TokenBatch, VisionLanguageModel
from halluc_bench.registry import Registry
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch, retain_batch
from halluc_bench.unlearning.lora import LoraSettings
from halluc_bench.unlearning.losses import mean_nll, policy_token_log_probs
from halluc_bench.unlearning.training import MixedPrecision, NonFiniteLossError, Reference, check_finite

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------- configuration
@dataclass(frozen=True)
class UnlearnerConfig:
    """Settings shared by every unlearner. Subclasses add their method's hyperparameters.

    ``lora=None`` means full fine-tuning of everything except the vision encoder; pass a
    :class:`LoraSettings` (or ``True`` for the defaults, or a dict) to train LoRA adapters on
    the language model instead. Losses are always computed in float32.
    """

    steps: int = 100  # optimizer steps
    batch_size: int = 8  # forget examples per step
    retain_batch_size: int | None = None  # retain examples per step; None: same as batch_size
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    optimizer: Literal["adamw", "sgd"] = "adamw"
    seed: int = 0
    lora: LoraSettings | None = None
    train_vision_tower: bool = False  # full fine-tuning only; LLaVA-style training keeps the encoder frozen
    forget_weight: float = 1.0  # gamma: weight of the forget term
    retain_weight: float = 1.0  # alpha (lambda for SARE): weight of the retain term
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; None: no clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    loss_dtype: Literal["float32"] = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", _as_lora(self.lora))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field; subclasses extend it and call ``super()``."""
        require_field(self, "steps", _is_int(self.steps) and self.steps >= 1, "an integer >= 1")
        require_field(self, "batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1")
        retain_size = self.retain_batch_size
        valid_retain_size = retain_size is None or (_is_int(retain_size) and retain_size >= 1)
        require_field(self, "retain_batch_size", valid_retain_size, "None or an integer >= 1")
        require_field(self, "learning_rate", _is_number(self.learning_rate) and self.learning_rate > 0, "a positive number")
        require_field(self, "weight_decay", _is_number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0")
        require_field(self, "optimizer", self.optimizer in ("adamw", "sgd"), "'adamw' or 'sgd'")
        require_field(self, "seed", _is_int(self.seed), "an integer")
        require_field(self, "forget_weight", _is_number(self.forget_weight) and self.forget_weight >= 0, "a number >= 0")
        require_field(self, "retain_weight", _is_number(self.retain_weight) and self.retain_weight >= 0, "a number >= 0")
        norm = self.max_grad_norm
        require_field(self, "max_grad_norm", norm is None or (_is_number(norm) and norm > 0), "None or a positive number")
        require_field(self, "mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"), "'no', 'bf16' or 'fp16'")
        require_field(self, "loss_dtype", self.loss_dtype == "float32", "'float32' (losses are always computed in fp32)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [item.name for item in dataclasses.fields(cls)]


def _as_lora(value: object) -> LoraSettings | None:
    if value is None or value is False:
        return None
    if value is True:
        return LoraSettings()
    if isinstance(value, LoraSettings):
        return value
    if isinstance(value, dict):
        return LoraSettings(**value)
    raise ValueError(f"lora must be None, True, a dict or LoraSettings, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def require_field(config: object, name: str, condition: bool, requirement: str) -> None:
    if not condition:
        raise ValueError(f"{type(config).__name__}.{name} must be {requirement}, got {getattr(config, name)!r}")


# ----------------------------------------------------------------- step inputs and results
@dataclass
class LossTerms:
    """The two parts of an objective; a part not requested (its batch was None) stays None.

    ``forget`` must depend only on the forget batch and ``retain`` only on the retain batch,
    so that sharpness-aware steps can take their gradients at different weights.
    """

    forget: torch.Tensor | None = None
    retain: torch.Tensor | None = None

    @property
    def total(self) -> torch.Tensor:
        parts = [term for term in (self.forget, self.retain) if term is not None]
        if not parts:
            raise ValueError("the loss hook returned neither a forget nor a retain term")
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def check_finite(self) -> None:
        for description, term in (("forget loss", self.forget), ("retain loss", self.retain)):
            if term is not None:
                check_finite(term, description)


@dataclass
class StepInputs:
    """Everything one optimizer step needs; passed to :meth:`Unlearner.step`."""

    index: int
    model: nn.Module
    forget: Any  # whatever encode_forget returned, on the model's device
    retain: Any | None  # whatever encode_retain returned, or None when the method uses no retain set
    reference: Reference | None
    optimizer: torch.optim.Optimizer
    precision: MixedPrecision
    parameters: list[nn.Parameter]  # the trainable parameters, for clipping


@dataclass
class StepValues:
    """Loss values of one step; ``total`` is the quantity whose gradient made the update."""

    forget: float
    retain: float
    total: float
    grad_norm: float
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StepLog:
    """One row of the training log."""

    step: int
    epoch: int  # epoch of the forget set
    batch: int  # batch index inside that epoch
    forget_loss: float
    retain_loss: float
    total_loss: float
    grad_norm: float
    seconds: float  # wall time of the optimizer step alone (forward, backward, update)
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class UnlearnResult:
    """An unlearned model (a new object; the input model is untouched) and how it was made."""

    vlm: VisionLanguageModel
    method: str
    log: list[StepLog]
    forget_fingerprint: str
    retain_fingerprint: str
    config: dict[str, Any]
    wall_time_s: float
    completed_steps: int

    def summary(self) -> dict[str, Any]:
        """Return everything except the model, as JSON-ready values."""
        return {
            "method": self.method,
            "config": self.config,
            "forget_fingerprint": self.forget_fingerprint,
            "retain_fingerprint": self.retain_fingerprint,
            "wall_time_s": self.wall_time_s,
            "completed_steps": self.completed_steps,
            "log": [dataclasses.asdict(row) for row in self.log],
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Save the model (``save_pretrained`` layout) and ``unlearning.json`` into ``directory``, atomically."""
        from halluc_bench.models.loader import save_vlm

        target = save_vlm(self.vlm, directory)
        handle, temporary = tempfile.mkstemp(prefix=".unlearning.", suffix=".json", dir=target)
        with os.fdopen(handle, "w") as stream:
            json.dump(self.summary(), stream, indent=2)
        os.replace(temporary, target / "unlearning.json")
        return target


# ----------------------------------------------------------------- the base class
class Unlearner:
    """Base class of every unlearning method.

    Subclasses set ``name`` and ``config_class`` and override :meth:`loss` (or :meth:`step`).
    :meth:`unlearn` runs the shared training loop, implemented in
    :mod:`halluc_bench.unlearning.loop`.
    """

    name: ClassVar[str] = "unlearner"
    config_class: ClassVar[type[UnlearnerConfig]] = UnlearnerConfig

    def __init__(self, config: UnlearnerConfig | None = None, **overrides: Any):
        self.config = build_config(self.config_class, config, overrides)

    # ------------------------------------------------------------- hooks
    def loss(self, model: nn.Module, forget: Any | None, retain: Any | None, reference: Reference | None) -> LossTerms:
        """Return the objective on one forget batch and one retain batch.

        Either batch may be None: a sharpness-aware step requests the forget term alone at the
        perturbed weights and the retain term alone at the unperturbed ones.
        """
        raise NotImplementedError(f"{type(self).__name__} must override loss() or step()")

    def step(self, inputs: StepInputs) -> StepValues:
        """Run one optimizer step: zero gradients, loss, backward, clip, update.

        Raises NonFiniteLossError before the update when a loss or the gradient is not finite.
        """
        inputs.optimizer.zero_grad(set_to_none=True)
        with inputs.precision.autocast():
            terms = self.loss(inputs.model, inputs.forget, inputs.retain, inputs.reference)
        terms.check_finite()
        total = terms.total
        inputs.precision.backward(total)
        grad_norm = inputs.precision.clip_and_step(inputs.optimizer, inputs.parameters, self.config.max_grad_norm)
        return StepValues(_value(terms.forget), _value(terms.retain), float(total.detach()), grad_norm)

    def encode_forget(self, vlm: VisionLanguageModel, data: UnlearningData, examples: list[SpanExample]) -> Any:
        """Encode forget examples; the default labels only the hallucinated mention tokens."""
        return forget_batch(vlm, data, examples)

    def encode_retain(self, vlm: VisionLanguageModel, data: UnlearningData, examples: list[SpanExample]) -> Any:
        """Encode retain examples; the default labels every caption token except hallucinated mentions."""
        return retain_batch(vlm, data, examples)

    def make_optimizer(self, named_parameters: list[tuple[str, nn.Parameter]]) -> torch.optim.Optimizer:
        """Return the optimizer over the trainable parameters (AdamW or SGD, constant learning rate)."""
        parameters = [parameter for _, parameter in named_parameters]
        lr, decay = self.config.learning_rate, self.config.weight_decay
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=lr, weight_decay=decay)
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads pi_ref; the loop then provides a :class:`Reference`."""
        return False

    @property
    def uses_retain(self) -> bool:
        """Whether the loop samples retain batches; methods with no retain term skip that cost."""
        return self.config.retain_weight > 0

    # ------------------------------------------------------------- helpers for subclasses
    def retain_nll_term(self, model: nn.Module, retain: TokenBatch | None) -> torch.Tensor | None:
        """Return ``retain_weight * NLL`` on the retain batch, or None when there is no retain batch."""
        if retain is None or self.config.retain_weight == 0:
            return None
        return self.config.retain_weight * mean_nll(*policy_token_log_probs(model, retain))

    # ------------------------------------------------------------- the run
    def unlearn(
        self,
        vlm: VisionLanguageModel,
        data: UnlearningData,
        reference: VisionLanguageModel | None = None,
        progress: bool = True,
    ) -> UnlearnResult:
        """Unlearn ``data.forget`` from a copy of ``vlm`` and return the new model with its log.

        ``reference`` is pi_ref for methods that need one; by default it is ``vlm`` as given.
        The result is deterministic for a given ``config.seed``. Raises NonFiniteLossError
        (with ``.result`` holding the last good weights) when a loss becomes NaN or infinite.
        """
        from halluc_bench.unlearning.loop import run_unlearning

        return run_unlearning(self, vlm, data, reference, progress)


def _value(term: torch.Tensor | None) -> float:
    return float(term.detach()) if term is not None else 0.0


def build_config(config_class: type[UnlearnerConfig], config: UnlearnerConfig | None, overrides: dict[str, Any]) -> UnlearnerConfig:
    """Return ``config`` (or the defaults) with ``overrides`` applied; unknown names raise ValueError."""
    valid = config_class.field_names()
    unknown = [name for name in overrides if name not in valid]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{config_class.__name__} has no field {unknown[0]!r}; valid fields: {', '.join(valid)}.{hint}")
    if config is None:
        return config_class(**overrides)
    if not isinstance(config, config_class):
        raise TypeError(f"expected a {config_class.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config


# ----------------------------------------------------------------- registry
UNLEARNERS: Registry[type[Unlearner]] = Registry("unlearner", "halluc_bench.unlearners", Unlearner)


def make_unlearner(name: str, config: UnlearnerConfig | None = None, **overrides: Any) -> Unlearner:
    """Build the unlearner registered as ``name`` with its default config plus ``overrides``."""
    return UNLEARNERS.get(name)(config, **overrides)


def describe_methods() -> list[dict[str, Any]]:
    """Return one row per registered method: name, class, summary and hyperparameter defaults."""
    rows = []
    for name, cls in UNLEARNERS.items():
        defaults = {}
        for item in dataclasses.fields(cls.config_class):
            if item.default is not dataclasses.MISSING:
                defaults[item.name] = item.default
            elif item.default_factory is not dataclasses.MISSING:
                defaults[item.name] = item.default_factory()
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append({
            "name": name,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "summary": summary,
            "hyperparameters": defaults,
        })
    return rows


__all__ = [
    "UNLEARNERS",
    "LossTerms",
    "NonFiniteLossError",
    "StepInputs",
    "StepLog",
    "StepValues",
    "UnlearnResult",
    "Unlearner",
    "UnlearnerConfig",
    "build_config",
    "describe_methods",
    "make_unlearner",
]
