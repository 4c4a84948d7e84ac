"""Attacks of the full audit on each chosen unlearned model, one stored record per attacked model.

Every record contains the attacked model's CHAIR (without captions), POPE adversarial metrics and
hallucinated-token probability on the repeat's hallucination probe set, plus the attack's
settings. The unlearned model's own ``<method>/eval`` and ``<method>/probe/hallucination``
records are the "before" values of every attack.
"""

from __future__ import annotations

import logging
from typing import Callable

from halluc_bench.audit import AuditContext, cached
from halluc_bench.audit_probes import probe_interpolation
from halluc_bench.audit_sets import ProbeSets
from halluc_bench.config import QUANTIZATION_PATTERN
from halluc_bench.evaluation import evaluate_chair, evaluate_pope
from halluc_bench.models.vlm import VisionLanguageModel

logger = logging.getLogger(__name__)


def attack_scores(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Score an attacked model: CHAIR, POPE adversarial and the hallucinated-token probability."""
    from halluc_bench.attacks.summary import hallucination_probability

    chair = evaluate_chair(vlm, context.eval_set)
    return {
        "chair": {key: value for key, value in chair.items() if key != "captions"},
        "pope": evaluate_pope(vlm, context.eval_set, ["adversarial"]),
        "hallucination_probability": hallucination_probability(vlm, sets.data, sets.hallucination),
    }


def _missing(context: AuditContext, keys: list[str]) -> bool:
    return any(not context.run.has(key) for key in keys)


def attack_relearn(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Relearn on k hallucinated captions for each k of the grid; the main k also gives the interpolation path."""
    from halluc_bench.attacks.relearn import relearn

    config = context.config
    path_key = f"{method}/probe/interpolation"
    for samples, examples in sets.relearn.items():
        keys = [f"{method}/relearn/k={samples}/steps={steps}" for steps in config.relearn_steps]
        needs_path = samples == sets.main_samples and not context.run.has(path_key)
        if not _missing(context, keys) and not needs_path:
            continue
        checkpoints = relearn(
            unlearned, sets.data, examples, steps=list(config.relearn_steps), learning_rate=config.relearn_learning_rate,
            batch_size=config.relearn_batch_size, seed=config.seed,
        )
        info = {"name": "relearn", "samples": len(examples), "sample_hash": checkpoints.info.sample_hash,
                "retain_hash": checkpoints.info.retain_hash, "learning_rate": config.relearn_learning_rate,
                "batch_size": checkpoints.info.effective_batch_size}
        for steps, attacked in checkpoints.items():
            cached(context, f"{method}/relearn/k={samples}/steps={steps}",
                   lambda: {**attack_scores(context, attacked, sets), "attack": {**info, "steps": steps}})
        if samples == sets.main_samples:
            relearned = checkpoints[max(checkpoints)]
            cached(context, path_key, lambda: probe_interpolation(context, unlearned, relearned, sets))


def attack_benign(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Relearn on faithful reference captions with the relearning attack's steps, rate and batch size."""
    from halluc_bench.attacks.relearn import benign_relearn

    config = context.config
    keys = [f"{method}/benign_relearn/steps={steps}" for steps in config.relearn_steps]
    if not _missing(context, keys):
        return
    checkpoints = benign_relearn(
        unlearned, sets.data, sets.benign, steps=list(config.relearn_steps), learning_rate=config.relearn_learning_rate,
        batch_size=config.relearn_batch_size, seed=config.seed,
    )
    info = {"name": "benign_relearn", "samples": len(sets.benign), "sample_hash": checkpoints.info.sample_hash,
            "learning_rate": config.relearn_learning_rate, "batch_size": checkpoints.info.effective_batch_size}
    for steps, attacked in checkpoints.items():
        cached(context, f"{method}/benign_relearn/steps={steps}",
               lambda: {**attack_scores(context, attacked, sets), "attack": {**info, "steps": steps}})


def attack_noise(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Add relative Gaussian weight noise, ``noise_draws`` draws per sigma.

    Every sigma draws from a generator seeded with the repeat's seed, so the draws of different
    sigmas (and of different models) share their standard-normal samples and differ only in scale.
    """
    from halluc_bench.attacks.noise import gaussian_weight_noise

    settings = context.config.full
    for sigma in settings.noise_sigmas:
        keys = [f"{method}/noise/sigma={sigma:g}/draw={draw}" for draw in range(settings.noise_draws)]
        if not _missing(context, keys):
            continue
        # NOTE: every draw of one sigma is a full model copy held in memory at once, noise_draws copies in all.
        noisy = gaussian_weight_noise(unlearned, sigma, draws=settings.noise_draws, seed=context.config.seed)
        for draw, (key, attacked) in enumerate(zip(keys, noisy)):
            attack = {"name": "weight_noise", "sigma": sigma, "draw": draw, "seed": context.config.seed}
            cached(context, key, lambda: {**attack_scores(context, attacked, sets), "attack": attack})


def attack_worst_case(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Projected gradient ascent on the attacker's hallucinated captions in a global L2 ball.

    The radius is relative: rho times the norm of the perturbed weights.
    """
    from halluc_bench.attacks.worst_case import worst_case_perturbation

    settings = context.config.full
    examples = sets.relearn[sets.main_samples]
    for radius in settings.worst_case_radii:
        def compute() -> dict:
            result = worst_case_perturbation(unlearned, sets.data, examples, radius, steps=settings.worst_case_steps,
                                             relative=True)
            return {**attack_scores(context, result.vlm, sets),
                    "attack": {"name": "worst_case", "samples": len(examples), **result.to_dict()}}

        cached(context, f"{method}/worst_case/rho={radius:g}", compute)


def attack_quantization(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Round-to-nearest quantization of every linear weight but the output head, for each setting."""
    from halluc_bench.attacks.quantize import quantize_weights

    settings = context.config.full
    for setting in settings.quantization:
        match = QUANTIZATION_PATTERN.match(setting)
        bits, granularity = int(match.group(1)), match.group(2)

        def compute() -> dict:
            attacked = quantize_weights(unlearned, bits, granularity=granularity,
                                        group_size=settings.quantization_group_size)
            attack = {"name": "quantize", "bits": bits, "granularity": granularity,
                      "group_size": settings.quantization_group_size if granularity == "per_group" else None}
            return {**attack_scores(context, attacked, sets), "attack": attack}

        cached(context, f"{method}/quantize/{setting}", compute)


# Record name under ``<method>/`` -> attack stage, in the order they run.
ATTACK_STAGES: dict[str, Callable[[AuditContext, str, VisionLanguageModel, ProbeSets], None]] = {
    "relearn": attack_relearn,
    "benign_relearn": attack_benign,
    "noise": attack_noise,
    "worst_case": attack_worst_case,
    "quantize": attack_quantization,
}


def attack_model(context: AuditContext, method: str, unlearned: VisionLanguageModel, sets: ProbeSets) -> None:
    """Run every stage of :data:`ATTACK_STAGES` on one unlearned model; finished cells are skipped."""
    for name, stage in ATTACK_STAGES.items():
        logger.info("attack %s on %s", name, method)
        stage(context, method, unlearned, sets)
