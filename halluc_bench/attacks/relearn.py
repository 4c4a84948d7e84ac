"""Relearning attacks: fine-tune an unlearned model on a few captions and watch hallucination return.

The attack fine-tunes a deep copy on k captions for s steps at learning rate η with the full
caption NLL (the model re-learns to say the captions), and returns the model after each
requested step count from one run. Hallucinated captions (the forget distribution) give the
relearning attack; faithful captions give benign relearning. Either way the examples must be
disjoint from the retain set, and their hash is recorded.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch
from tqdm.auto import tqdm

from halluc_bench.attacks.registry import ATTACKS
from halluc_bench.models.vlm import TokenBatch, VisionLanguageModel, token_log_probs
from halluc_bench.unlearning.data import SpanExample, UnlearningData

logger = logging.getLogger(__name__)

OptimizerName = Literal["adamw", "sgd"]


@dataclass(frozen=True)
class RelearnConfig:
    """Relearning hyperparameters. ``steps`` are the step counts whose models are returned."""

    steps: tuple[int, ...]
    learning_rate: float
    batch_size: int
    seed: int
    benign: bool = False
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("steps is empty; request at least one step count, e.g. steps=[0, 10, 50]")
        if any(not isinstance(step, int) or step < 0 for step in self.steps):
            raise ValueError(f"steps must be non-negative integers, got {list(self.steps)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")


@dataclass(frozen=True)
class RelearnInfo:
    """Provenance of one relearning run."""

    sample_hash: str  # order-free hash of the relearning examples
    retain_hash: str  # hash of the retain set they were checked against
    n_samples: int
    config: RelearnConfig
    effective_batch_size: int  # batch_size, capped at the number of examples
    losses: tuple[float, ...]  # mean caption NLL of the batch at each step, before its update

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RelearnCheckpoints(dict):
    """The models after each requested step count (``dict[int, VisionLanguageModel]``) plus ``info``."""

    def __init__(self, models: dict[int, VisionLanguageModel], info: RelearnInfo):
        super().__init__(sorted(models.items()))
        self.info = info


def examples_hash(examples: Sequence[SpanExample]) -> str:
    """Return an order-free hash of ``examples``' content keys."""
    digest = hashlib.sha256()
    for key in sorted(example.key() for example in examples):
        digest.update(key.encode())
    return digest.hexdigest()[:16]


def check_relearn_examples(data: UnlearningData, examples: Sequence[SpanExample], benign: bool) -> None:
    """Raise ValueError unless ``examples`` suit the attack and are disjoint from the retain set."""
    if not examples:
        raise ValueError("no relearning examples given; pass at least one SpanExample")
    kind = "faithful (benign)" if benign else "hallucinated"
    wrong = [example for example in examples if example.is_hallucinated == benign]
    if wrong:
        raise ValueError(
            f"{len(wrong)} of {len(examples)} relearning examples are not {kind} captions, e.g. image "
            f"{wrong[0].image_id}: {wrong[0].caption!r}; {'remove forget spans' if benign else 'give forget spans'}"
        )
    retain_keys = {example.key() for example in data.retain}
    overlap = [example for example in examples if example.key() in retain_keys]
    if overlap:
        raise ValueError(
            f"{len(overlap)} relearning examples are also in the retain set, e.g. image {overlap[0].image_id}; "
            "draw them from held-out data"
        )
    missing = sorted({example.image_id for example in examples} - set(data.pixels))
    if missing:
        raise ValueError(f"no pixel values for relearning image ids {missing[:10]}; add them to data.pixels")


def choose_relearn_examples(
    pool: Sequence[SpanExample], k: int, seed: int, exclude: Sequence[SpanExample] = ()
) -> list[SpanExample]:
    """Draw ``k`` distinct examples from ``pool`` without those in ``exclude``, reproducibly from ``seed``."""
    excluded = {example.key() for example in exclude}
    candidates = [example for example in pool if example.key() not in excluded]
    if k < 1 or k > len(candidates):
        raise ValueError(f"cannot draw k={k} examples from {len(candidates)} candidates (pool minus excluded)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(candidates), generator=generator)[:k].tolist()
    return [candidates[index] for index in order]


def caption_batch(vlm: VisionLanguageModel, data: UnlearningData, examples: Sequence[SpanExample]) -> TokenBatch:
    """Encode examples with every caption token (and the end-of-sequence token) labelled."""
    return vlm.encode(
        [vlm.prompt(example.question) for example in examples],
        [example.caption for example in examples],
        data.pixel_batch(examples),
    )


def _rows(batch: TokenBatch, rows: list[int]) -> TokenBatch:
    index = torch.tensor(rows)
    return TokenBatch(batch.input_ids[index], batch.attention_mask[index], batch.pixel_values[index], batch.labels[index])


def _batch_rows(n_examples: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Yield batches of example indices, reshuffled each epoch; a batch never spans two epochs."""
    while True:
        order = torch.randperm(n_examples, generator=generator).tolist()
        for start in range(0, n_examples - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def _snapshot(vlm: VisionLanguageModel, model: torch.nn.Module, step: int, benign: bool) -> VisionLanguageModel:
    # NOTE: each requested step count keeps a full in-memory copy of the model, so billion-parameter
    # models can afford only a few step counts per run.
    copied = copy.deepcopy(model).eval()
    label = "benign-relearn" if benign else "relearn"
    return VisionLanguageModel(copied, vlm.processor, name=f"{vlm.name}+{label}@{step}")


def _caption_nll(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    parameter = next(model.parameters())
    batch = batch.to(parameter.device, dtype=parameter.dtype)
    log_probs, mask = token_log_probs(model(**batch.model_inputs()).logits, batch.labels)  # (batch, seq - 1)
    return -log_probs.sum() / mask.sum().clamp(min=1)


@ATTACKS.register("relearn")
def relearn(
    vlm: VisionLanguageModel,
    data: UnlearningData,
    examples: Sequence[SpanExample],
    steps: Sequence[int],
    learning_rate: float,
    batch_size: int,
    seed: int,
    benign: bool = False,
    *,
    optimizer: OptimizerName = "adamw",
    weight_decay: float = 0.0,
) -> RelearnCheckpoints:
    """Fine-tune a copy of ``vlm`` on ``examples`` and return the model after each count in ``steps``.

    One run of max(steps) optimizer steps; step 0 is an unchanged copy. Each step takes a batch
    of ``batch_size`` examples (reshuffled per epoch by a generator seeded with ``seed``) and
    minimises the mean token NLL of the whole captions. Only parameters with
    ``requires_grad`` are trained (for a LoRA model, the adapters). Dropout, if any, draws
    from the global generator seeded with ``seed`` inside a forked RNG state, so the same
    seed gives the same models. ``vlm`` is not changed.
    """
    config = RelearnConfig(tuple(sorted(set(steps))), learning_rate, batch_size, seed, benign, optimizer, weight_decay)
    examples = list(examples)
    check_relearn_examples(data, examples, benign)
    effective_batch = min(batch_size, len(examples))
    if effective_batch < batch_size:
        logger.info("batch_size %d exceeds the %d relearning examples; using %d", batch_size, len(examples), effective_batch)
    batch = caption_batch(vlm, data, examples)
    model = copy.deepcopy(vlm.model)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError(f"model {vlm.name!r} has no trainable parameter (requires_grad=True) to relearn with")
    if optimizer == "adamw":
        update = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=weight_decay)
    else:
        update = torch.optim.SGD(trainable, lr=learning_rate, weight_decay=weight_decay)
    rows = _batch_rows(len(examples), effective_batch, torch.Generator().manual_seed(seed))
    models = {0: _snapshot(vlm, model, 0, benign)} if 0 in config.steps else {}
    losses: list[float] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        for step in tqdm(range(1, max(config.steps) + 1), desc="relearn", leave=False, disable=None):
            loss = _caption_nll(model, _rows(batch, next(rows)))
            update.zero_grad(set_to_none=True)
            loss.backward()
            update.step()
            losses.append(float(loss.detach()))
            if step in config.steps:
                models[step] = _snapshot(vlm, model, step, benign)
    info = RelearnInfo(examples_hash(examples), examples_hash(data.retain), len(examples), config, effective_batch,
                       tuple(losses))
    logger.info("relearned %s on %d examples (hash %s) for %d steps", vlm.name, len(examples), info.sample_hash,
                max(config.steps))
    return RelearnCheckpoints(models, info)


@ATTACKS.register("benign_relearn")
def benign_relearn(
    vlm: VisionLanguageModel,
    data: UnlearningData,
    examples: Sequence[SpanExample],
    steps: Sequence[int],
    learning_rate: float,
    batch_size: int,
    seed: int,
    *,
    optimizer: OptimizerName = "adamw",
    weight_decay: float = 0.0,
) -> RelearnCheckpoints:
    """Relearn on faithful captions (no forget spans): :func:`relearn` with ``benign=True``."""
    return relearn(vlm, data, examples, steps, learning_rate, batch_size, seed, benign=True, optimizer=optimizer,
                   weight_decay=weight_decay)
