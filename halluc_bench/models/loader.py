"""Load and save any Hugging Face image-text-to-text checkpoint from a local directory.

The organism and real checkpoints (LLaVA-1.5, Qwen-VL, ...) go through the same two calls,
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``, with
``local_files_only=True``: nothing is fetched from a hub at run time.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForImageTextToText, AutoProcessor

from halluc_bench.models.vlm import VisionLanguageModel

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or unreadable."""


def check_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it looks like a ``save_pretrained`` directory, else raise CheckpointError."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint directory {directory} not found; pass a local directory written by save_pretrained "
            "(config.json, weights and processor files)"
        )
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"checkpoint directory {directory} has no config.json; it is not a save_pretrained output")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"checkpoint directory {directory} has no weights ({', '.join(WEIGHT_FILES)}); "
            "re-save the model with save_pretrained"
        )
    return directory


def load_vlm(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    name: str | None = None,
) -> VisionLanguageModel:
    """Load a model and its processor from a local checkpoint directory.

    Raises CheckpointError naming the directory when it is missing, incomplete or corrupt.
    """
    directory = check_checkpoint_dir(path)
    try:
        processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(
            directory, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        summary = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint directory {directory} could not be loaded ({summary}); "
            "re-create it with save_pretrained, or delete it so that it is rebuilt"
        ) from error
    model.eval()
    logger.info("loaded %s from %s (%.2fM parameters)", type(model).__name__, directory, _millions(model))
    return VisionLanguageModel(model, processor, name=name or directory.name)


def save_vlm(vlm: VisionLanguageModel, path: str | os.PathLike) -> Path:
    """Save model and processor with ``save_pretrained`` (safetensors), atomically.

    The files are written to a sibling temporary directory that replaces ``path`` only when
    complete, so an interrupted save never leaves a half-written checkpoint behind.
    """
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        vlm.model.save_pretrained(staging, safe_serialization=True)
        vlm.processor.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _millions(model: torch.nn.Module) -> float:
    return sum(parameter.numel() for parameter in model.parameters()) / 1e6
