"""LoRA adapters (through peft) and the parameter groups an unlearner trains or perturbs.

Adapters go on the attention and MLP projections of the language model only; the vision
tower and the projector stay frozen under LoRA. After training the adapters are merged back,
so an unlearned model saves and loads like any other checkpoint.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Attention and MLP projections of Llama-, Mistral- and Qwen-style decoders.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Parameter-name fragments of the vision encoders of common Hugging Face VLMs (LLaVA, Qwen-VL,
# Idefics, PaliGemma). NOTE: a model whose encoder uses another name is treated as all language model.
VISION_NAME_FRAGMENTS = ("vision_tower", "visual.", "vision_model", "image_encoder")
LANGUAGE_MODEL_FRAGMENTS = ("language_model", "lm_head")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape; ``alpha / rank`` scales the adapter output."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # no dropout, so that a fixed seed gives identical runs without extra generators
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        modules = tuple(self.target_modules)
        if not modules or not all(isinstance(name, str) and name for name in modules):
            raise ValueError(f"lora.target_modules must be non-empty module names, got {self.target_modules!r}")
        object.__setattr__(self, "target_modules", modules)


def is_vision_parameter(name: str) -> bool:
    return any(fragment in name for fragment in VISION_NAME_FRAGMENTS)


def is_language_model_parameter(name: str) -> bool:
    """Return True for decoder and output-head parameters (under LoRA: their adapters)."""
    if is_vision_parameter(name):
        return False
    return any(fragment in name for fragment in LANGUAGE_MODEL_FRAGMENTS)


def language_model_target_regex(settings: LoraSettings) -> str:
    """Return the peft ``target_modules`` regex that selects the projections inside the language model."""
    alternatives = "|".join(re.escape(name) for name in settings.target_modules)
    return rf".*language_model\..*\.({alternatives})$"


def attach_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` (in place) with fresh LoRA adapters on its language model; return the peft model.

    Raises ValueError when no module of the language model matches ``settings.target_modules``.
    """
    from peft import LoraConfig, get_peft_model

    pattern = language_model_target_regex(settings)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if not matched:
        raise ValueError(
            f"no language-model module matches lora.target_modules {settings.target_modules}; "
            "pass the names of the decoder's attention/MLP projections"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=pattern,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    logger.info("attached LoRA rank %d to %d modules", settings.rank, len(matched))
    return peft_model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge LoRA adapters into the base weights and return the plain model."""
    return model.merge_and_unload()


def has_lora(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "disable_adapter")


def trainable_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            yield name, parameter


def freeze_for_full_finetuning(model: nn.Module, train_vision_tower: bool) -> dict[str, bool]:
    """Set ``requires_grad`` for full fine-tuning and return the previous flags by parameter name.

    Everything trains except the vision encoder, unless ``train_vision_tower``.
    """
    previous = {}
    for name, parameter in model.named_parameters():
        previous[name] = parameter.requires_grad
        parameter.requires_grad_(train_vision_tower or not is_vision_parameter(name))
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError("full fine-tuning found no trainable parameter outside the vision encoder")
    return previous


def restore_requires_grad(model: nn.Module, previous: dict[str, bool]) -> None:
    for name, parameter in model.named_parameters():
        if name in previous:
            parameter.requires_grad_(previous[name])


def count_parameters(parameters: list[torch.Tensor]) -> int:
    return sum(parameter.numel() for parameter in parameters)
