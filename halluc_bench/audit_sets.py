"""The fixed example sets of one seed's repeat of the full audit, shared by every model it scores.

Every set is drawn from the mined data (or the mining split's reference captions) with a
generator seeded from the repeat's seed, so a resumed run draws the same examples again.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from halluc_bench.audit import AuditContext, relearn_examples
from halluc_bench.unlearning.data import SpanExample, UnlearningData

logger = logging.getLogger(__name__)

# Offsets added to the repeat's seed, one per drawn set, so that the sets are independent draws.
# The forget probes (offset 2) and the relearning examples (offset 1) are the standard audit's.
RETAIN_PROBE_OFFSET = 3
HALLUCINATION_PROBE_OFFSET = 4
BENIGN_OFFSET = 5


@dataclass
class ProbeSets:
    """Example sets of one repeat: Hessian probes, the hallucination probe set and the attackers' captions."""

    data: UnlearningData  # the mined data plus the pixels of the benign captions
    forget: list[SpanExample]  # forget-loss probes of every sharpness measure
    retain: list[SpanExample]  # retain-loss probes (retain trace and retain NLL)
    hallucination: list[SpanExample]  # where the hallucinated-token probability is measured
    relearn: dict[int, list[SpanExample]]  # attacker sample count k -> hallucinated captions
    benign: list[SpanExample]  # faithful reference captions of the benign relearning attack
    main_samples: int  # the k whose curve the leaderboard summarises


def build_probe_sets(context: AuditContext, data: UnlearningData) -> ProbeSets:
    """Draw every fixed set of the repeat from ``data`` and the mining split (see :class:`ProbeSets`)."""
    config = context.config
    if not data.retain:
        raise ValueError(
            "mining found no faithful caption, so the retain probes are empty; raise --mine-images or audit "
            "a model that also produces faithful captions"
        )
    count = min(config.trace_examples, len(data.forget))
    forget = random.Random(config.seed + 2).sample(data.forget, count)
    retain = random.Random(config.seed + RETAIN_PROBE_OFFSET).sample(data.retain, min(config.trace_examples, len(data.retain)))
    relearn = {config.relearn_samples: relearn_examples(context, data)}
    for samples in config.full.relearn_sample_grid:
        if samples not in relearn:
            relearn[samples] = random.Random(config.seed + 1).sample(data.forget, min(samples, len(data.forget)))
    relearn = dict(sorted(relearn.items()))
    benign, benign_pixels = benign_examples(context, data)
    merged = UnlearningData(forget=data.forget, retain=data.retain, pixels={**data.pixels, **benign_pixels})
    return ProbeSets(merged, forget, retain, hallucination_probes(context, data, relearn), relearn, benign,
                     config.relearn_samples)


def hallucination_probes(context: AuditContext, data: UnlearningData, relearn: dict[int, list[SpanExample]]) -> list[SpanExample]:
    """Draw the hallucination probe set from forget examples that no relearning attacker trains on.

    When the attackers use every forget example, the probe set is drawn from the whole forget set.
    """
    used = {example.key() for examples in relearn.values() for example in examples}
    candidates = [example for example in data.forget if example.key() not in used]
    if not candidates:
        logger.warning("every forget example is a relearning example; the hallucination probes overlap them")
        candidates = list(data.forget)
    count = min(context.config.full.probe_examples, len(candidates))
    return random.Random(context.config.seed + HALLUCINATION_PROBE_OFFSET).sample(candidates, count)


def benign_examples(context: AuditContext, data: UnlearningData) -> tuple[list[SpanExample], dict[int, torch.Tensor]]:
    """Draw ``relearn_samples`` faithful reference captions of the mining split and preprocess their images.

    Images that were not mined come first, in an order shuffled with the repeat's seed, so the
    attacker's data is related to the forget data but held out from it. A reference caption counts
    as faithful when CHAIR finds no object in it that the image's annotations lack. Raises
    ValueError when the split has no such caption.
    """
    from halluc_bench.unlearning.mining import chair_mention_finder, mine_spans

    config, world = context.config, context.world
    definition = context.eval_set.chair_definition
    finder = chair_mention_finder(lemmatizer=definition["lemmatizer"])
    ids = sorted(world.image_ids(config.mine_split))
    random.Random(config.seed + BENIGN_OFFSET).shuffle(ids)
    ids.sort(key=lambda image_id: image_id in data.pixels)  # stable: held-out images first
    retain_keys = {example.key() for example in data.retain}
    chosen: list[SpanExample] = []
    for image_id in ids:
        present = world.objects(config.mine_split, image_id)
        for caption in world.reference_captions(config.mine_split, image_id):
            example = mine_spans(image_id, caption, present, finder, definition["instruction"])
            if not example.is_hallucinated and example.key() not in retain_keys:
                chosen.append(example)
                break
        if len(chosen) == config.relearn_samples:
            break
    if not chosen:
        raise ValueError(
            f"split {config.mine_split!r} has no faithful reference caption for benign relearning; "
            "give its captions file reference captions"
        )
    image_ids = sorted({example.image_id for example in chosen})
    pixels = context.base.pixel_values([world.load_image(config.mine_split, image_id) for image_id in image_ids])
    return chosen, dict(zip(image_ids, pixels))
