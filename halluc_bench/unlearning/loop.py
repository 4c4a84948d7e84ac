"""The training loop behind :meth:`Unlearner.unlearn`, shared by every method."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm.auto import tqdm

from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.unlearning.data import UnlearningData
from halluc_bench.unlearning.lora import attach_lora, freeze_for_full_finetuning, merge_lora, restore_requires_grad
from halluc_bench.unlearning.training import BatchPosition, BatchSampler, MixedPrecision, NonFiniteLossError, Reference

if TYPE_CHECKING:
    from halluc_bench.unlearning.base import StepLog, UnlearnResult, Unlearner

logger = logging.getLogger(__name__)


@dataclass
class _Run:
    """State of one run: the working copy being trained and what trains it."""

    vlm: VisionLanguageModel  # the working copy; its model is replaced by the merged one at the end
    model: nn.Module  # the trained module (a peft wrapper under LoRA)
    named_parameters: list[tuple[str, nn.Parameter]]
    optimizer: torch.optim.Optimizer
    reference: Reference | None
    precision: MixedPrecision
    requires_grad_before: dict[str, bool]
    pixel_dtype: torch.dtype
    started: float


def run_unlearning(
    unlearner: "Unlearner",
    vlm: VisionLanguageModel,
    data: UnlearningData,
    reference: VisionLanguageModel | None,
    progress: bool,
) -> "UnlearnResult":
    """Train a copy of ``vlm`` with ``unlearner`` and return the result (see :meth:`Unlearner.unlearn`)."""
    check_unlearning_data(unlearner, data)
    started = time.perf_counter()
    # Dropout and any other global-RNG use inside the model see a stream fixed by the seed,
    # and the caller's global RNG state is restored afterwards.
    with torch.random.fork_rng(devices=_rng_devices(vlm.model)):
        torch.manual_seed(unlearner.config.seed)
        run = _prepare(unlearner, vlm, reference, started)
        log: list[StepLog] = []
        try:
            _train(unlearner, run, data, log, progress)
        except NonFiniteLossError as error:
            error.result = _finish(unlearner, run, data, log)
            logger.error("%s stopped: %s", unlearner.name, error)
            raise
    return _finish(unlearner, run, data, log)


def check_unlearning_data(unlearner: "Unlearner", data: UnlearningData) -> None:
    """Raise ValueError when the forget set is empty, a needed retain set is empty, or the two overlap."""
    if not data.forget:
        raise ValueError("the forget set is empty: mining found no hallucinated mention to unlearn")
    if unlearner.uses_retain and not data.retain:
        raise ValueError(
            f"{unlearner.name} needs retain examples but the retain set is empty; add faithful captions "
            "or set retain_weight=0"
        )
    overlap = {example.key() for example in data.forget} & {example.key() for example in data.retain}
    if overlap:
        raise ValueError(f"{len(overlap)} examples are in both the forget and the retain set, e.g. key {sorted(overlap)[0]}")


def _prepare(unlearner: "Unlearner", vlm: VisionLanguageModel, reference: VisionLanguageModel | None, started: float) -> _Run:
    config = unlearner.config
    working = copy.deepcopy(vlm.model)
    requires_grad_before = {name: parameter.requires_grad for name, parameter in working.named_parameters()}
    if config.lora is not None:
        for parameter in working.parameters():
            parameter.requires_grad_(False)
        model = attach_lora(working, config.lora)
    else:
        freeze_for_full_finetuning(working, config.train_vision_tower)
        model = working
    model.train()
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    device = next(model.parameters()).device
    frozen = None
    if unlearner.needs_reference:
        # The input model is never trained, so it serves as pi_ref without a second copy.
        frozen = Reference((reference or vlm).model)
    logger.info(
        "%s: training %d tensors (%.3fM parameters), %s",
        unlearner.name,
        len(named),
        sum(parameter.numel() for _, parameter in named) / 1e6,
        "LoRA" if config.lora is not None else "full fine-tuning",
    )
    return _Run(
        vlm=VisionLanguageModel(model, vlm.processor, name=f"{vlm.name}-{unlearner.name}"),
        model=model,
        named_parameters=named,
        optimizer=unlearner.make_optimizer(named),
        reference=frozen,
        precision=MixedPrecision(config.mixed_precision, device),
        requires_grad_before=requires_grad_before,
        pixel_dtype=next(model.parameters()).dtype,
        started=started,
    )


def _train(unlearner: "Unlearner", run: _Run, data: UnlearningData, log: list, progress: bool) -> None:
    from halluc_bench.unlearning.base import StepInputs, StepLog

    config = unlearner.config
    device = next(run.model.parameters()).device
    forget_order = iter(BatchSampler(len(data.forget), config.batch_size, config.seed))
    retain_order = None
    if unlearner.uses_retain:
        retain_size = config.retain_batch_size or config.batch_size
        retain_order = iter(BatchSampler(len(data.retain), retain_size, config.seed + 1))
    parameters = [parameter for _, parameter in run.named_parameters]
    bar = tqdm(range(config.steps), desc=f"unlearn {unlearner.name}", disable=not progress, leave=False)
    for index in bar:
        position = next(forget_order)
        forget_examples = [data.forget[i] for i in position.indices]
        forget = unlearner.encode_forget(run.vlm, data, forget_examples).to(device, run.pixel_dtype)
        retain = None
        if retain_order is not None:
            retain_examples = [data.retain[i] for i in next(retain_order).indices]
            retain = unlearner.encode_retain(run.vlm, data, retain_examples).to(device, run.pixel_dtype)
        inputs = StepInputs(index, run.model, forget, retain, run.reference, run.optimizer, run.precision, parameters)
        started = time.perf_counter()
        try:
            values = unlearner.step(inputs)
        except NonFiniteLossError as error:
            raise _located(error, unlearner.name, index, position, forget_examples) from error
        seconds = time.perf_counter() - started
        log.append(
            StepLog(index, position.epoch, position.batch, values.forget, values.retain, values.total,
                    values.grad_norm, seconds, dict(values.extras))
        )
        bar.set_postfix(forget=f"{values.forget:.3f}", retain=f"{values.retain:.3f}")


def _located(error: NonFiniteLossError, method: str, index: int, position: BatchPosition, examples: list) -> NonFiniteLossError:
    image_ids = [example.image_id for example in examples[:8]]
    message = (
        f"{method}: {error} at step {index} (forget epoch {position.epoch}, batch {position.batch}, "
        f"image ids {image_ids}); the run stopped and kept the weights after {index} completed steps"
    )
    return NonFiniteLossError(message, step=index)


def _finish(unlearner: "Unlearner", run: _Run, data: UnlearningData, log: list) -> "UnlearnResult":
    from halluc_bench.unlearning.base import UnlearnResult

    run.model.eval()
    run.optimizer.zero_grad(set_to_none=True)
    model = merge_lora(run.model) if unlearner.config.lora is not None else run.model
    restore_requires_grad(model, run.requires_grad_before)
    run.vlm.model = model
    wall = time.perf_counter() - run.started
    logger.info("%s: %d steps in %.1f s", unlearner.name, len(log), wall)
    return UnlearnResult(
        vlm=run.vlm,
        method=unlearner.name,
        log=list(log),
        forget_fingerprint=data.fingerprint("forget"),
        retain_fingerprint=data.fingerprint("retain"),
        config=unlearner.config.to_dict(),
        wall_time_s=wall,
        completed_steps=len(log),
    )


def _rng_devices(model: nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []
