"""The organism's training loop: captions and yes/no answers, from scratch, resumable.

Every step draws one batch of caption examples and yes/no examples. The batch's data order
depends only on the training seed and the step number (one seeded ``torch.Generator`` per
step), so a run that resumes from a checkpoint draws the same batches as one that never
stopped. A checkpoint (model, optimizer, step and RNG state) is written atomically every
``checkpoint_every`` steps and at the end.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from halluc_bench.models.vlm import IGNORE_INDEX, TokenBatch, VisionLanguageModel, token_log_probs

logger = logging.getLogger(__name__)

ExampleKind = Literal["caption", "yes_no"]
LossWeighting = Literal["example", "token"]
Schedule = Literal["cosine", "constant"]
CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


@dataclass(frozen=True)
class TrainingExample:
    """One training pair: a question about image ``image`` and the target answer."""

    image: int  # row of ``TrainingData.pixel_values``
    question: str
    target: str
    kind: ExampleKind


@dataclass
class TrainingData:
    """Preprocessed pixels of every training image plus the caption and yes/no examples that use them."""

    pixel_values: torch.Tensor  # (images, 3, height, width)
    captions: Sequence[TrainingExample]
    yes_no: Sequence[TrainingExample] = ()

    def __post_init__(self) -> None:
        if not self.captions:
            raise ValueError("training data holds no caption examples; pass at least one")
        for example in (*self.captions, *self.yes_no):
            if not 0 <= example.image < len(self.pixel_values):
                raise ValueError(
                    f"example {example.question!r} -> {example.target!r} uses image row {example.image}, "
                    f"but pixel_values has {len(self.pixel_values)} rows"
                )


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings of the organism's training run.

    The learning rate warms up linearly over ``warmup_steps`` and then follows ``schedule``
    ("cosine" decays to ``min_learning_rate_ratio`` times the peak at the last step).
    Batches hold captions only for the first ``caption_only_steps`` steps; after that the
    share of yes/no examples grows linearly from ``yes_no_share_start`` to
    ``yes_no_share_end`` at the last step. With ``loss_weighting="example"`` each example
    contributes its mean token loss (a one-token answer weighs as much as a whole caption),
    and yes/no examples are further weighted by ``yes_no_weight``; with ``"token"`` every
    labelled token of the batch weighs the same.
    """

    steps: int = 1500
    batch_size: int = 48
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.05
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    weight_decay: float = 0.01
    gradient_clip: float = 1.0  # maximum global L2 norm of the gradient; 0 disables clipping
    caption_only_steps: int = 300
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
    """What one training run did: steps, wall-clock seconds of this process, and loss history."""

    steps: int
    resumed_from: int  # the step the run started at (0 for a fresh run)
    seconds: float  # wall-clock seconds spent training in this process
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


def draw_batch(data: TrainingData, config: TrainingConfig, step: int) -> list[TrainingExample]:
    """Return the examples of 0-based ``step``; the draw depends only on the seed and the step."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    n_yes_no = config.yes_no_count(step) if data.yes_no else 0
    n_captions = config.batch_size - n_yes_no
    caption_rows = torch.randint(len(data.captions), (n_captions,), generator=generator).tolist()
    batch = [data.captions[row] for row in caption_rows]
    if n_yes_no:
        yes_no_rows = torch.randint(len(data.yes_no), (n_yes_no,), generator=generator).tolist()
        batch.extend(data.yes_no[row] for row in yes_no_rows)
    return batch


def encode_examples(vlm: VisionLanguageModel, data: TrainingData, examples: Sequence[TrainingExample]) -> TokenBatch:
    """Tokenize ``examples`` with the model's chat prompt and label their target tokens."""
    rows = torch.tensor([example.image for example in examples])
    prompts = [vlm.prompt(example.question) for example in examples]
    return vlm.encode(prompts, [example.target for example in examples], data.pixel_values[rows])


def batch_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, weighting: LossWeighting
) -> torch.Tensor:
    """Return the weighted negative log-likelihood of a batch.

    ``logits`` is (batch, seq, vocab), ``labels`` (batch, seq) unshifted and ``weights``
    (batch,). "example": the weighted mean over examples of each example's mean token NLL.
    "token": the weighted mean over all labelled tokens, each token weighted by its example.
    """
    log_probs, mask = token_log_probs(logits, labels)  # (batch, seq - 1) each
    counts = mask.sum(dim=1)  # (batch,)
    if not bool((counts > 0).all()):
        raise ValueError("an example has no labelled target token; check that its target is not empty")
    if weighting == "example":
        per_example = -log_probs.sum(dim=1) / counts
        return (weights * per_example).sum() / weights.sum()
    token_weights = weights.unsqueeze(1) * mask
    return -(log_probs * token_weights).sum() / token_weights.sum()


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
    except (OSError, RuntimeError, EOFError, ValueError) as error:
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
) -> TrainingResult:
    """Train ``vlm.model`` in place on ``data``; resume from ``checkpoint_path`` when it exists.

    The caller sets ``torch.set_num_threads``; results are bitwise reproducible only for a
    fixed thread count.
    """
    model = vlm.model
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
    began = time.perf_counter()
    running, running_count = 0.0, 0
    bar = tqdm(range(start, config.steps), desc="training organism", disable=not progress, initial=start, total=config.steps)
    for step in bar:
        loss = _train_step(vlm, data, config, optimizer, step)
        running, running_count = running + loss, running_count + 1
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{config.learning_rate_at(step):.1e}", refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            history.append((done, running / running_count))
            running, running_count = 0.0, 0
            logger.info("step %d/%d: mean loss %.4f", done, config.steps, history[-1][1])
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, optimizer, done, config, history)
    bar.close()
    model.eval()
    return TrainingResult(steps=config.steps, resumed_from=start, seconds=time.perf_counter() - began, loss_history=history)


def _train_step(
    vlm: VisionLanguageModel, data: TrainingData, config: TrainingConfig, optimizer: torch.optim.Optimizer, step: int
) -> float:
    examples = draw_batch(data, config, step)
    batch = encode_examples(vlm, data, examples)
    weights = torch.tensor([config.yes_no_weight if e.kind == "yes_no" else 1.0 for e in examples])
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate_at(step)
    logits = vlm.model(**batch.model_inputs()).logits  # (batch, seq, vocab)
    loss = batch_loss(logits, batch.labels, weights, config.loss_weighting)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.gradient_clip > 0:
        torch.nn.utils.clip_grad_norm_(vlm.model.parameters(), config.gradient_clip)
    optimizer.step()
    return float(loss.detach())
