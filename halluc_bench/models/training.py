"""The organism's training loop: captions and yes/no answers, from scratch, resumable.

Every step draws one batch of caption examples and yes/no examples. The draw depends only
on the training seed and the step number (one seeded ``torch.Generator`` per step), so a run
that resumes from a checkpoint draws the same batches as one that never stopped. A
checkpoint (model, optimizer, step and RNG state) is written atomically every
``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

from halluc_bench.models.training_data import TokenizedExamples, TrainingData, draw_rows
from halluc_bench.models.vlm import VisionLanguageModel, token_log_probs

logger = logging.getLogger(__name__)

LossWeighting = Literal["example", "token"]
Schedule = Literal["cosine", "constant"]
CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of the organism's training run.

    The learning rate warms up linearly over ``warmup_steps`` and then follows ``schedule``
    ("cosine" decays to ``min_learning_rate_ratio`` times the peak at the last step).
    Batches hold captions only for the first ``caption_only_steps`` steps. After that, the
    share of yes/no examples grows linearly from ``yes_no_share_start`` to
    ``yes_no_share_end`` at the last step. With ``loss_weighting="example"`` each example
    contributes its mean token loss (a one-token answer weighs as much as a whole caption),
    and yes/no examples are further weighted by ``yes_no_weight``; with ``"token"`` every
    labelled token of the batch weighs the same.
    """

    # With the organism's default world, yes/no answers began to depend on the image after
    # 300 to 450 steps in runs with seeds 0 to 2, so 800 steps leave a margin.
    steps: int = 800
    batch_size: int = 48
    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.05
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    weight_decay: float = 0.01
    gradient_clip: float = 1.0  # maximum global L2 norm of the gradient; 0 disables clipping
    caption_only_steps: int = 150
    yes_no_share_start: float = 0.5
    yes_no_share_end: float = 0.5
    loss_weighting: LossWeighting = "example"
    yes_no_weight: float = 1.0
    checkpoint_every: int = 100  # steps between resumable checkpoints
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainingConfig.{name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "caption_only_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainingConfig.{name} must be a non-negative integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainingConfig.learning_rate must be positive, got {self.learning_rate!r}")
        for name in ("min_learning_rate_ratio", "yes_no_share_start", "yes_no_share_end"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"TrainingConfig.{name} must lie in [0, 1], got {value!r}")
        for name in ("weight_decay", "gradient_clip", "yes_no_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainingConfig.{name} must be non-negative, got {getattr(self, name)!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown TrainingConfig.schedule {self.schedule!r}; valid: cosine, constant")
        if self.loss_weighting not in ("example", "token"):
            raise ValueError(f"unknown TrainingConfig.loss_weighting {self.loss_weighting!r}; valid: example, token")

    def learning_rate_at(self, step: int) -> float:
        """Return the learning rate of 0-based ``step``."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.learning_rate
        span = max(1, self.steps - self.warmup_steps - 1)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.min_learning_rate_ratio
        return self.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def yes_no_count(self, step: int) -> int:
        """Return how many of the batch's examples at 0-based ``step`` are yes/no questions."""
        if step < self.caption_only_steps:
            return 0
        span = max(1, self.steps - self.caption_only_steps - 1)
        progress = min(1.0, (step - self.caption_only_steps) / span)
        share = self.yes_no_share_start + (self.yes_no_share_end - self.yes_no_share_start) * progress
        return min(self.batch_size, round(share * self.batch_size))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingResult:
    """Summary of one training run: steps, time spent in this process, and loss history."""

    steps: int
    resumed_from: int  # the step the run started at (0 for a fresh run)
    seconds: float  # wall-clock seconds spent training in this process
    cpu_seconds: float  # CPU seconds of this process (all threads) spent training
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last entry)

    @property
    def seconds_per_step(self) -> float:
        trained = self.steps - self.resumed_from
        return self.seconds / trained if trained else 0.0

    @property
    def final_loss(self) -> float | None:
        return self.loss_history[-1][1] if self.loss_history else None


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be read or belongs to another run."""


def weighted_loss_terms(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, weighting: LossWeighting
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the numerator and denominator of a batch's weighted negative log-likelihood.

    ``logits`` is (batch, seq, vocab), ``labels`` (batch, seq) unshifted and ``weights``
    (batch,). With "example" the loss is the weighted mean over examples of each example's
    mean token NLL. With "token" it is the weighted mean over all labelled tokens, each token
    weighted by its example. Terms of several batches add up before the division.
    """
    log_probs, mask = token_log_probs(logits, labels)  # (batch, seq - 1) each
    counts = mask.sum(dim=1)  # (batch,)
    if not bool((counts > 0).all()):
        raise ValueError("an example has no labelled target token; check that its target is not empty")
    if weighting == "example":
        per_example = -log_probs.sum(dim=1) / counts
        return (weights * per_example).sum(), weights.sum()
    token_weights = weights.unsqueeze(1) * mask
    return -(log_probs * token_weights).sum(), token_weights.sum()


def _optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    # Matrices decay; biases, norm scales and other vectors do not.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.98))


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config: TrainingConfig, history: list) -> None:
    """Write a resumable training checkpoint atomically (temporary file, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "loss_history": list(history),
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, config: TrainingConfig) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` for the same ``config``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise TrainingCheckpointError(
            f"training checkpoint {path} could not be read ({type(error).__name__}); delete it to restart training"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingCheckpointError(f"training checkpoint {path} has an unknown format; delete it to restart training")
    if state.get("config") != config.to_dict():
        raise TrainingCheckpointError(
            f"training checkpoint {path} was written with other training settings; delete it to restart training"
        )
    return state


def train(
    vlm: VisionLanguageModel,
    data: TrainingData,
    config: TrainingConfig,
    checkpoint_path: str | os.PathLike | None = None,
    progress: bool = True,
    on_interval: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Train ``vlm.model`` in place on ``data``; resume from ``checkpoint_path`` when it exists.

    Every ``checkpoint_every`` steps the mean loss is logged, the checkpoint written, and
    ``on_interval(step, mean_loss)`` called (for learning curves); training mode is restored after it.

    The caller sets ``torch.set_num_threads``; results are bitwise reproducible only for a
    fixed thread count.
    """
    model = vlm.model
    tokenized = TokenizedExamples(vlm, data)
    optimizer = _optimizer(model, config)
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    start, history = 0, []
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, history = int(state["step"]), [tuple(entry) for entry in state["loss_history"]]
        logger.info("resuming training from %s at step %d of %d", checkpoint, start, config.steps)

    model.train()
    began, began_cpu = time.perf_counter(), time.process_time()
    running, running_count = 0.0, 0
    with tqdm(total=config.steps, initial=start, desc="training organism", disable=None if progress else True) as bar:
        for step in range(start, config.steps):
            loss = _train_step(model, tokenized, config, optimizer, step)
            running, running_count = running + loss, running_count + 1
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{config.learning_rate_at(step):.1e}", refresh=False)
            done = step + 1
            if done % config.checkpoint_every and done != config.steps:
                continue
            history.append((done, running / running_count))
            running, running_count = 0.0, 0
            logger.info("step %d/%d: mean loss %.4f", done, config.steps, history[-1][1])
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer, done, config, history)
            if on_interval is not None:
                on_interval(done, history[-1][1])
                model.train()
    model.eval()
    return TrainingResult(
        steps=config.steps,
        resumed_from=start,
        seconds=time.perf_counter() - began,
        cpu_seconds=time.process_time() - began_cpu,
        loss_history=history,
    )


def _train_step(
    model: torch.nn.Module,
    tokenized: TokenizedExamples,
    config: TrainingConfig,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> float:
    examples = draw_rows(tokenized.data, config.batch_size, config.yes_no_count(step), config.seed, step)
    numerator, denominator = torch.zeros(()), torch.zeros(())
    # Captions and yes/no questions go through separate forward passes, so the short
    # questions are not padded to caption length.
    for kind, weight in (("caption", 1.0), ("yes_no", config.yes_no_weight)):
        group = [example for example in examples if example.kind == kind]
        if not group:
            continue
        batch = tokenized.batch(group)
        logits = model(**batch.model_inputs()).logits  # (group, seq, vocab)
        terms = weighted_loss_terms(logits, batch.labels, torch.full((len(group),), weight), config.loss_weighting)
        numerator, denominator = numerator + terms[0], denominator + terms[1]
    loss = numerator / denominator
    for param_group in optimizer.param_groups:
        param_group["lr"] = config.learning_rate_at(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.gradient_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip)
    optimizer.step()
    return float(loss.detach())
