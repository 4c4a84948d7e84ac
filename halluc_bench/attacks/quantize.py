"""Round-to-nearest weight quantization, returned as a dequantized floating-point model.

Quantized tensors: the weight matrices of every ``nn.Linear`` module (attention and MLP
projections of the language model and the vision tower, the multimodal projector), except
the output head (``get_output_embeddings()``, the ``lm_head``), which quantization libraries
usually keep in full precision. Untouched: token, patch and position embeddings, the
convolutional patch embedding, norm weights, all biases, the output head.

Quantization groups run along the input dimension: "per_channel" gives one scale per output
row, "per_group" one per ``group_size`` consecutive inputs of a row (a shorter last group when
the row length is not a multiple). "asymmetric" maps [min(w, 0), max(w, 0)] of a group onto
the 2^b integer levels 0 … 2^b − 1 with a zero point, so 0 stays exact; "symmetric" maps
[−max|w|, max|w|] onto −(2^(b−1) − 1) … 2^(b−1) − 1. Either way a group's dequantized weights
take at most 2^b distinct values. Everything runs in PyTorch (CPU or GPU).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from typing import Literal

import torch
from torch import nn

from halluc_bench.attacks.registry import ATTACKS
from halluc_bench.models.vlm import VisionLanguageModel

logger = logging.getLogger(__name__)

Granularity = Literal["per_channel", "per_group"]
Scheme = Literal["asymmetric", "symmetric"]
Backend = Literal["torch", "bitsandbytes"]


def quantize_tensor(
    weight: torch.Tensor,
    bits: int,
    granularity: Granularity = "per_channel",
    group_size: int = 128,
    scheme: Scheme = "asymmetric",
) -> torch.Tensor:
    """Quantize a 2-D ``weight`` by round-to-nearest and return the dequantized tensor (same dtype)."""
    _check_options(bits, granularity, group_size, scheme)
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    size = columns if granularity == "per_channel" else min(group_size, columns)
    n_groups = -(-columns // size)
    padded = torch.zeros(rows, n_groups * size, dtype=torch.float32, device=weight.device)
    padded[:, :columns] = weight.detach().float()
    groups = padded.view(rows, n_groups, size)  # padding zeros lie inside every range, so they change nothing
    if scheme == "asymmetric":
        low = groups.amin(dim=-1, keepdim=True).clamp(max=0.0)
        high = groups.amax(dim=-1, keepdim=True).clamp(min=0.0)
        levels = 2**bits - 1
        scale = (high - low) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
        zero_point = torch.round(-low / scale)
        codes = torch.clamp(torch.round(groups / scale) + zero_point, 0, levels)  # integers 0 … 2^b − 1
        dequantized = (codes - zero_point) * scale
    else:
        largest = 2 ** (bits - 1) - 1
        scale = groups.abs().amax(dim=-1, keepdim=True) / largest
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.clamp(torch.round(groups / scale), -largest, largest)
        dequantized = codes * scale
    return dequantized.view(rows, -1)[:, :columns].to(weight.dtype)


def _check_options(bits: int, granularity: str, group_size: int, scheme: str) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8 (4 and 8 are the usual), got {bits!r}")
    if granularity not in ("per_channel", "per_group"):
        raise ValueError(f"granularity must be 'per_channel' or 'per_group', got {granularity!r}")
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    if scheme not in ("asymmetric", "symmetric"):
        raise ValueError(f"scheme must be 'asymmetric' or 'symmetric', got {scheme!r}")


def quantizable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Return the weights that :func:`quantize_weights` changes: every ``nn.Linear`` weight but the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    selected = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            selected.append((f"{module_name}.weight" if module_name else "weight", module.weight))
    return selected


@ATTACKS.register("quantize")
def quantize_weights(
    vlm: VisionLanguageModel,
    bits: int,
    *,
    granularity: Granularity = "per_group",
    group_size: int = 128,
    scheme: Scheme = "asymmetric",
    backend: Backend = "torch",
) -> VisionLanguageModel:
    """Return a copy of ``vlm`` whose linear weights are quantized to ``bits`` bits and dequantized.

    ``backend="torch"`` is the round-to-nearest integer quantizer of this module.
    ``backend="bitsandbytes"`` needs a CUDA GPU and the bitsandbytes package and uses its
    quantizers instead (see :func:`_bitsandbytes_roundtrip`). ``vlm`` is not changed.
    """
    _check_options(bits, granularity, group_size, scheme)
    if backend == "bitsandbytes":
        _require_bitsandbytes(bits)
    elif backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'bitsandbytes', got {backend!r}")
    model = copy.deepcopy(vlm.model).eval()
    weights = quantizable_weights(model)
    with torch.no_grad():
        for _, weight in weights:
            if backend == "torch":
                weight.copy_(quantize_tensor(weight, bits, granularity, group_size, scheme))
            else:
                weight.copy_(_bitsandbytes_roundtrip(weight, bits, group_size))
    label = f"int{bits}-{granularity}" + (f"{group_size}" if granularity == "per_group" else "")
    logger.info("quantized %d linear weights of %s to %s (%s)", len(weights), vlm.name, label, backend)
    return VisionLanguageModel(model, vlm.processor, name=f"{vlm.name}+{label}")


def _require_bitsandbytes(bits: int) -> None:
    if bits not in (4, 8):
        raise ValueError(f"the bitsandbytes backend supports 4 and 8 bits, got {bits}")
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "backend='bitsandbytes' needs a CUDA GPU and the bitsandbytes package; use backend='torch' instead"
        )


def _bitsandbytes_roundtrip(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Quantize and dequantize with bitsandbytes: LLM.int8() row-wise absmax, or 4-bit FP4 blocks.

    The 4-bit format is bitsandbytes' FP4 with one absmax per block of ``group_size`` entries
    of the flattened weight, not integer levels.
    """
    # NOTE: written against the bitsandbytes 0.45+ functional API; no CUDA GPU was available to run it.
    import bitsandbytes.functional as bnb_functional

    device_weight = weight.detach().to("cuda", torch.float16)
    if bits == 8:
        codes, row_stats, _ = bnb_functional.int8_vectorwise_quant(device_weight)
        restored = bnb_functional.int8_vectorwise_dequant(codes, row_stats)
    else:
        codes, state = bnb_functional.quantize_4bit(device_weight, blocksize=group_size, quant_type="fp4")
        restored = bnb_functional.dequantize_4bit(codes, state)
    return restored.to(weight.device, weight.dtype)
