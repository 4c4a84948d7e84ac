"""Loss closures over fixed forget or retain batches, the inputs of every probe.

A closure takes the ``nn.Module`` (so a probe can evaluate it at perturbed weights or on a
copy of the model) and returns the mean token NLL over the labelled tokens, in fp32.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from halluc_bench.models.vlm import IGNORE_INDEX, TokenBatch, VisionLanguageModel, token_log_probs
from halluc_bench.unlearning.data import SpanExample, UnlearningData, forget_batch, retain_batch

LossFn = Callable[[nn.Module], torch.Tensor]


def summed_token_nll(model: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, int]:
    """Return the fp32 sum of token NLLs over ``batch``'s labelled tokens, and their count."""
    parameter = next(model.parameters())
    batch = batch.to(parameter.device, dtype=parameter.dtype if parameter.dtype.is_floating_point else None)
    logits = model(**batch.model_inputs()).logits  # (batch, seq, vocab)
    log_probs, mask = token_log_probs(logits, batch.labels)  # (batch, seq - 1), fp32
    return -log_probs.sum(), int(mask.sum())


def batch_loss_fn(batches: Sequence[TokenBatch]) -> LossFn:
    """Return a closure computing the mean token NLL over all labelled tokens of ``batches``.

    Splitting the examples into several batches gives the same value as one batch (the sum is
    divided by the total token count), only with less activation memory.
    """
    batches = list(batches)
    total = sum(int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) for batch in batches)
    if total == 0:
        raise ValueError("the batches label no tokens, so the mean NLL is undefined; check the spans")

    def loss_fn(model: nn.Module) -> torch.Tensor:
        summed = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
        for batch in batches:
            batch_sum, _ = summed_token_nll(model, batch)
            summed = summed + batch_sum
        return summed / total

    return loss_fn


def _split(examples: Sequence[SpanExample], batch_size: int | None) -> list[Sequence[SpanExample]]:
    if not examples:
        raise ValueError("no examples given; pass at least one SpanExample")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    size = batch_size or len(examples)
    return [examples[start : start + size] for start in range(0, len(examples), size)]


def forget_loss_fn(
    vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample], batch_size: int | None = None
) -> LossFn:
    """Return the mean NLL of the hallucinated-mention tokens of ``examples`` as a loss closure."""
    return batch_loss_fn([forget_batch(vlm, data, chunk) for chunk in _split(examples, batch_size)])


def retain_loss_fn(
    vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample], batch_size: int | None = None
) -> LossFn:
    """Return the mean NLL of every caption token except hallucinated mentions as a loss closure."""
    return batch_loss_fn([retain_batch(vlm, data, chunk) for chunk in _split(examples, batch_size)])
