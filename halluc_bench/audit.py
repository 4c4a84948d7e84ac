"""The standard audit: evaluate, mine, unlearn, attack, probe, and write a leaderboard.

``run_audit`` also runs the full profile, which :mod:`halluc_bench.audit_full` implements on
the same context, records and cache rules.

Each finished cell is stored in the run directory as it completes, so an interrupted audit
resumes where it stopped and a finished one is re-reported without recomputation.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from halluc_bench.config import RunConfig
from halluc_bench.tasks.mme_eval import evaluate_mme
from halluc_bench.evaluation import EvaluationSet, build_evaluation_set, evaluate, evaluate_chair, evaluate_pope
from halluc_bench.models.loader import load_vlm
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.report.leaderboard import write_leaderboard
from halluc_bench.results.store import RunDirectory, write_json_atomic
from halluc_bench.tasks.definitions import load_task_definition
from halluc_bench.unlearning.data import SpanExample, UnlearningData
from halluc_bench.world.coco import World

logger = logging.getLogger(__name__)

BASE = "base"


@dataclass
class AuditContext:
    """The state shared by every stage of one audit."""

    config: RunConfig
    run: RunDirectory
    world: World
    base: VisionLanguageModel
    eval_set: EvaluationSet


def run_audit(config: RunConfig) -> Path:
    """Run the audit of ``config.profile`` and return the run directory."""
    started = time.perf_counter()
    context = prepare_audit(config)
    if config.profile == "full":
        from halluc_bench.audit_full import run_full_audit

        return run_full_audit(context, started)
    base, eval_set = context.base, context.eval_set
    cached(context, f"{BASE}/eval", lambda: evaluate(base, eval_set))
    data = mined_data(context)
    cached(context, f"{BASE}/probe/trace", lambda: probe_trace(context, base, data))
    for method in tqdm(config.methods, desc="methods", unit="method"):
        audit_method(context, method, data)
    paths = write_leaderboard(context.run, config)
    logger.info("audit finished in %.1f s; leaderboard at %s", time.perf_counter() - started, paths["markdown"])
    return context.run.root


def prepare_audit(config: RunConfig) -> AuditContext:
    """Open the run directory, check its stored configuration, load world and model, and fix the evaluation set."""
    torch.set_num_threads(config.threads)
    run = RunDirectory(config.output_dir)
    fields = config.result_fields()
    stored = config.resume and run.check_config(fields)
    # The checkpoint and world load before anything is written or cleared, so that a wrong path
    # leaves the run directory as it was.
    world, base = resolve_world_and_model(config)
    if not config.resume:
        run.clear()
    if not stored:
        run.write_config(fields)
    pope_definition, chair_definition = load_task_definition("pope"), load_task_definition("chair")
    mme_definition = load_task_definition("mme")
    if config.mme_images is not None:
        mme_definition = dataclasses.replace(mme_definition, settings={**mme_definition.settings, "images": config.mme_images})
    eval_set = build_evaluation_set(
        world, config.eval_split, base, pope_definition, chair_definition, config.seed,
        pope_images=config.pope_images, caption_images=config.caption_images, mme_definition=mme_definition,
    )
    return AuditContext(config, run, world, base, eval_set)


def resolve_world_and_model(config: RunConfig) -> tuple[World, VisionLanguageModel]:
    """Return the world and model to audit: a user checkpoint and world, or the cached organism."""
    if config.checkpoint is not None:
        vlm = load_vlm(config.checkpoint, attn_implementation="eager")
        world = World.from_dir(config.world) if config.world else _organism_world(config)
        return world, vlm
    from halluc_bench.models.organism import default_organism_config, ensure_organism

    organism = ensure_organism(default_organism_config(seed=config.seed), config.cache_dir)
    return World.from_dir(organism.world_dir), load_vlm(organism.checkpoint_dir, attn_implementation="eager", name=BASE)


def _organism_world(config: RunConfig) -> World:
    from halluc_bench.models.organism import default_organism_config, ensure_world

    return ensure_world(default_organism_config(seed=config.seed), config.cache_dir)


def cached(context: AuditContext, key: str, compute) -> dict:
    """Return the stored record ``key``, computing and storing it first when absent."""
    if context.run.has(key):
        logger.info("reusing %s from %s", key, context.run.records_dir)
        return context.run.get(key)
    logger.info("computing %s", key)
    started = time.perf_counter()
    record = compute()
    record["seconds"] = round(time.perf_counter() - started, 3)
    context.run.put(key, record)
    return record


# ----------------------------------------------------------------------------- mining
def mined_data(context: AuditContext) -> UnlearningData:
    """Mine forget and retain spans from the base model's own captions of the mining split (cached)."""
    path = context.run.root / "mined.json"
    record = cached(context, "mining", lambda: mine(context, path))
    examples = _read_examples(path)
    forget = [e for e in examples if e.is_hallucinated]
    retain = [e for e in examples if not e.is_hallucinated]
    image_ids = sorted({e.image_id for e in examples})
    images = [context.world.load_image(context.config.mine_split, image_id) for image_id in image_ids]
    pixels = dict(zip(image_ids, context.base.pixel_values(images)))
    data = UnlearningData(forget=forget, retain=retain, pixels=pixels)
    if data.fingerprint("forget") != record["forget_fingerprint"]:
        raise ValueError(f"{path} does not match its record; delete {context.run.root} or pass --no-resume")
    return data


def mine(context: AuditContext, path: Path) -> dict:
    """Caption ``mine_images`` images of the mining split with the base model and split the captions' spans."""
    from halluc_bench.unlearning.mining import chair_mention_finder, mine_unlearning_data

    config, world, chair_definition = context.config, context.world, context.eval_set.chair_definition
    ids = sorted(world.image_ids(config.mine_split))
    ids = sorted(random.Random(config.seed).sample(ids, min(config.mine_images, len(ids))))
    data = mine_unlearning_data(
        context.base, world, config.mine_split, ids,
        find_mentions=chair_mention_finder(lemmatizer=chair_definition["lemmatizer"]),
        question=chair_definition["instruction"],
        max_new_tokens=int(chair_definition["max_new_tokens"]),
    )
    write_json_atomic(path, [_example_to_dict(e) for e in (*data.forget, *data.retain)])
    return {
        "images": len(ids),
        "forget_examples": len(data.forget),
        "retain_examples": len(data.retain),
        "forget_spans": sum(len(e.forget_spans) for e in data.forget),
        "forget_fingerprint": data.fingerprint("forget"),
        "retain_fingerprint": data.fingerprint("retain"),
    }


def _example_to_dict(example: SpanExample) -> dict:
    return {
        "image_id": example.image_id,
        "caption": example.caption,
        "forget_spans": [list(span) for span in example.forget_spans],
        "faithful_spans": [list(span) for span in example.faithful_spans],
        "question": example.question,
    }


def _read_examples(path: Path) -> list[SpanExample]:
    import json

    return [
        SpanExample(
            image_id=int(item["image_id"]),
            caption=item["caption"],
            forget_spans=tuple(tuple(span) for span in item["forget_spans"]),
            faithful_spans=tuple(tuple(span) for span in item["faithful_spans"]),
            question=item["question"],
        )
        for item in json.loads(path.read_text(encoding="utf-8"))
    ]


# ----------------------------------------------------------------------------- per method
def audit_method(context: AuditContext, method: str, data: UnlearningData) -> None:
    """Unlearn with ``method``, evaluate, attack by relearning, and probe the Hessian trace."""
    model_dir = context.run.root / "models" / method
    record = cached(context, f"{method}/unlearn", lambda: unlearn(context, method, data, model_dir))
    unlearned = load_vlm(model_dir, attn_implementation="eager", name=method)
    cached(context, f"{method}/eval", lambda: evaluate(unlearned, context.eval_set))
    missing = [s for s in context.config.relearn_steps if not context.run.has(f"{method}/relearn/steps={s}")]
    if missing:
        attack_relearn(context, method, unlearned, data)
    cached(context, f"{method}/probe/trace", lambda: probe_trace(context, unlearned, data))
    del record


def unlearn(context: AuditContext, method: str, data: UnlearningData, model_dir: Path) -> dict:
    from halluc_bench.unlearning.base import make_unlearner

    config = context.config
    unlearner = make_unlearner(
        method, steps=config.unlearn_steps, batch_size=config.unlearn_batch_size, seed=config.seed,
        learning_rate=config.unlearn_learning_rate,
    )
    result = unlearner.unlearn(context.base, data, reference=context.base)
    result.save(model_dir)
    return result.summary()


def relearn_examples(context: AuditContext, data: UnlearningData) -> list[SpanExample]:
    """Draw the k hallucinated captions the attacker fine-tunes on from the forget set, with the run seed."""
    count = min(context.config.relearn_samples, len(data.forget))
    return random.Random(context.config.seed + 1).sample(data.forget, count)


def attack_relearn(context: AuditContext, method: str, unlearned: VisionLanguageModel, data: UnlearningData) -> None:
    from halluc_bench.attacks.relearn import relearn

    config = context.config
    examples = relearn_examples(context, data)
    checkpoints = relearn(
        unlearned, data, examples, steps=list(config.relearn_steps), learning_rate=config.relearn_learning_rate,
        batch_size=config.relearn_batch_size, seed=config.seed,
    )
    info = {"sample_hash": checkpoints.info.sample_hash, "retain_hash": checkpoints.info.retain_hash,
            "learning_rate": config.relearn_learning_rate, "batch_size": checkpoints.info.effective_batch_size}
    for steps, attacked in checkpoints.items():
        key = f"{method}/relearn/steps={steps}"
        cached(context, key, lambda: {
            "chair": _without_captions(evaluate_chair(attacked, context.eval_set)),
            "pope": evaluate_pope(attacked, context.eval_set, ["adversarial"]),
            **({"mme": evaluate_mme(attacked, context.eval_set.mme)} if context.eval_set.mme else {}),
            "attack": {"name": "relearn", "samples": len(examples), "steps": steps, **info},
        })


def _without_captions(chair: dict) -> dict:
    return {key: value for key, value in chair.items() if key != "captions"}


def probe_trace(context: AuditContext, vlm: VisionLanguageModel, data: UnlearningData) -> dict:
    """Hutchinson estimate of the Hessian trace of the forget loss at the model's weights."""
    from halluc_bench.probes.losses import forget_loss_fn
    from halluc_bench.probes.trace import hutchinson_trace

    config = context.config
    examples = random.Random(config.seed + 2).sample(data.forget, min(config.trace_examples, len(data.forget)))
    loss_fn = forget_loss_fn(vlm, data, examples)
    generator = torch.Generator().manual_seed(config.seed)
    estimate = hutchinson_trace(
        vlm.model, loss_fn, generator=generator, max_probes=config.trace_probes, min_probes=config.trace_probes,
        tolerance=0.0,  # a fixed number of probes, so that every model gets the same estimator
    )
    return {"hessian_trace": estimate.to_dict(), "examples": len(examples)}
