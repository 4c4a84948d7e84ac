"""Training-loop parts shared by every unlearner: batch order, the frozen reference model,
mixed precision and the non-finite-loss guard."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from halluc_bench.models.vlm import TokenBatch, token_log_probs
from halluc_bench.unlearning.losses import model_logits, sequence_log_probs

logger = logging.getLogger(__name__)

MixedPrecisionMode = Literal["no", "bf16", "fp16"]


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN or infinite; the run stopped before applying that update.

    The training loop adds the step index and attaches ``result``, the partial
    :class:`UnlearnResult` that holds the last good weights.
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step
        self.result = None


def check_finite(value: torch.Tensor, what: str) -> None:
    """Raise NonFiniteLossError naming ``what`` when ``value`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(value.detach()).all()):
        raise NonFiniteLossError(f"{what} is {value.detach().float().flatten()[0].item()}")


# ----------------------------------------------------------------- batch order
@dataclass(frozen=True)
class BatchPosition:
    """Where a batch comes from: its epoch, its index inside the epoch and its example indices."""

    epoch: int
    batch: int
    indices: tuple[int, ...]


class BatchSampler:
    """Endless shuffled batches of example indices, reshuffled every epoch by a seeded generator.

    The last batch of an epoch may be smaller than ``batch_size``.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < 1:
            raise ValueError("cannot sample batches from an empty set of examples")
        self.size = size
        self.batch_size = min(batch_size, size)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[BatchPosition]:
        epoch = 0
        while True:
            order = torch.randperm(self.size, generator=self.generator).tolist()
            for batch, start in enumerate(range(0, self.size, self.batch_size)):
                yield BatchPosition(epoch, batch, tuple(order[start : start + self.batch_size]))
            epoch += 1


# ----------------------------------------------------------------- reference model
class Reference:
    """The frozen model before unlearning (pi_ref), queried without gradients.

    Summed sequence log-probabilities are cached per row (keyed by the row's tokens, labels
    and pixels), so a forget example costs one reference forward pass per run, not one per
    step. The model is switched to eval mode for each query and back afterwards.
    """

    def __init__(self, model: nn.Module, max_cached_rows: int = 1_000_000):
        self.model = model
        self.max_cached_rows = max_cached_rows
        self._sequence_cache: dict[bytes, float] = {}

    @contextlib.contextmanager
    def _active(self) -> Iterator[nn.Module]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """Return pi_ref logits (batch, seq, vocab)."""
        with self._active() as model:
            return model_logits(model, batch)

    @torch.no_grad()
    def sequence_log_probs(self, batch: TokenBatch) -> torch.Tensor:
        """Return pi_ref's summed log-probability of each row's labelled tokens, fp32 (batch,)."""
        keys = [_row_key(batch, row) for row in range(len(batch))]
        missing = [row for row, key in enumerate(keys) if key not in self._sequence_cache]
        if missing:
            computed = self._compute_rows(batch, missing)
            if len(self._sequence_cache) + len(missing) > self.max_cached_rows:
                self._sequence_cache.clear()
            for row, value in zip(missing, computed):
                self._sequence_cache[keys[row]] = value
        values = [self._sequence_cache[key] for key in keys]
        return torch.tensor(values, dtype=torch.float32, device=batch.input_ids.device)

    def _compute_rows(self, batch: TokenBatch, rows: list[int]) -> list[float]:
        index = torch.tensor(rows, device=batch.input_ids.device)
        sub = TokenBatch(batch.input_ids[index], batch.attention_mask[index], batch.pixel_values[index], batch.labels[index])
        logp, mask = token_log_probs(self.logits(sub), sub.labels)
        return sequence_log_probs(logp, mask).tolist()


def _row_key(batch: TokenBatch, row: int) -> bytes:
    keep = batch.attention_mask[row].bool()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(batch.input_ids[row][keep].cpu().numpy().tobytes())
    digest.update(batch.labels[row][keep].cpu().numpy().tobytes())
    digest.update(batch.pixel_values[row].detach().float().cpu().numpy().tobytes())
    return digest.digest()


# ----------------------------------------------------------------- mixed precision
class MixedPrecision:
    """Autocast and loss scaling for one run; ``mode="no"`` makes every method a plain pass-through.

    ``fp16`` uses a ``torch.amp.GradScaler``: losses are scaled before backward and gradients
    unscaled before clipping, and a step whose gradients overflow is skipped by the scaler.
    """

    def __init__(self, mode: MixedPrecisionMode, device: torch.device):
        if mode not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mode!r}")
        self.mode = mode
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mode == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    @property
    def grad_scale(self) -> float:
        """Factor by which the current ``.grad`` values are scaled (1.0 without a scaler)."""
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    def clip_and_step(self, optimizer: torch.optim.Optimizer, parameters: list[torch.Tensor], max_norm: float | None) -> float:
        """Unscale, clip to ``max_norm`` and apply the optimizer; return the gradient norm before clipping.

        Without a scaler a non-finite gradient norm raises NonFiniteLossError before the update.
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        limit = max_norm if max_norm is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, limit))
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
            return norm
        if not math.isfinite(norm):
            raise NonFiniteLossError(f"gradient norm is {norm}")
        optimizer.step()
        return norm
