"""A quick check of a trained organism on one world split: captions (CHAIR) and POPE.

Captions come from greedy decoding of "Describe the image."; POPE questions are built from the
split's instance annotations with the audit's own builder and scored with the official answer
rule. Object mentions in captions are read by matching the world's category names (singular
or plural) in the caption's word tokens, which is exact for the toy world's closed vocabulary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from halluc_bench.models.organism_data import load_pixels
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.tasks.pope import POPE_SPLITS, build_pope, score_pope
from halluc_bench.unlearning.data import CAPTION_QUESTION
from halluc_bench.world.captions import plural, word_tokens
from halluc_bench.world.coco import World

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionMetrics:
    """CHAIR-style caption metrics; rates are fractions in [0, 1]."""

    n_captions: int
    recall: float  # unique correct mentions / ground-truth objects
    chair_s: float  # captions with a hallucinated mention / captions
    chair_i: float  # hallucinated mentions / all mentions, repeats counted
    partner_rate: float  # captions naming an absent co-occurrence partner of a present object / captions
    partner_share: float  # hallucinated mentions that are such partners / hallucinated mentions


def caption_mentions(caption: str, names: list[str]) -> list[str]:
    """Return the category names a caption mentions, in order, repeats kept; longer names match first."""
    tokens = word_tokens(caption)
    forms = sorted(((tuple(word_tokens(form)), name) for name in names for form in (name, plural(name))),
                   key=lambda item: -len(item[0]))
    found, index = [], 0
    while index < len(tokens):
        for form, name in forms:
            if tuple(tokens[index : index + len(form)]) == form:
                found.append(name)
                index += len(form)
                break
        else:
            index += 1
    return found


def score_captions(world: World, split: str, captions: dict[int, str]) -> CaptionMetrics:
    """Score generated captions by image id against the image's annotations and reference captions."""
    names = world.category_names()
    partners = world.config.partner_of() if world.config is not None else {}
    mentions_total = hallucinated_total = partner_total = with_hallucination = with_partner = 0
    recalled = ground_truth_total = 0
    for image_id, caption in captions.items():
        truth = set(world.objects(split, image_id))
        for reference in world.reference_captions(split, image_id):
            truth.update(caption_mentions(reference, names))
        if not truth:
            raise ValueError(f"image {image_id} of split {split!r} has no ground-truth object; it cannot be scored")
        mentioned = caption_mentions(caption, names)
        wrong = [name for name in mentioned if name not in truth]
        partner_wrong = [name for name in wrong if any(partners.get(present) == name for present in truth)]
        mentions_total += len(mentioned)
        hallucinated_total += len(wrong)
        partner_total += len(partner_wrong)
        with_hallucination += bool(wrong)
        with_partner += bool(partner_wrong)
        recalled += len(truth & set(mentioned))
        ground_truth_total += len(truth)
    n = len(captions)
    return CaptionMetrics(
        n_captions=n,
        recall=recalled / ground_truth_total if ground_truth_total else 0.0,
        chair_s=with_hallucination / n if n else 0.0,
        chair_i=hallucinated_total / mentions_total if mentions_total else 0.0,
        partner_rate=with_partner / n if n else 0.0,
        partner_share=partner_total / hallucinated_total if hallucinated_total else 0.0,
    )


def evaluate_captions(vlm: VisionLanguageModel, world: World, split: str, n_images: int, max_new_tokens: int = 48) -> tuple[CaptionMetrics, dict[int, str]]:
    """Caption the first ``n_images`` images of a split greedily and score them."""
    image_ids = world.image_ids(split)[:n_images]
    pixels = load_pixels(vlm, world, split, image_ids)
    texts = vlm.generate_captions(pixels, CAPTION_QUESTION, max_new_tokens=max_new_tokens)
    captions = dict(zip(image_ids, texts))
    return score_captions(world, split, captions), captions


def evaluate_pope(vlm: VisionLanguageModel, world: World, split: str, n_images: int, seed: int = 0) -> dict[str, dict]:
    """Answer POPE random, popular and adversarial questions on ``n_images`` images; return metrics per strategy."""
    by_file_name = world.image_id_by_file_name(split)
    results: dict[str, dict] = {}
    pixel_cache: dict[int, torch.Tensor] = {}
    for strategy in POPE_SPLITS:
        questions = build_pope(world.instances_path(split), strategy=strategy, n_images=n_images, seed=seed)
        image_ids = [by_file_name[question["image"]] for question in questions]
        missing = sorted(set(image_ids) - set(pixel_cache))
        if missing:
            for image_id, row in zip(missing, load_pixels(vlm, world, split, missing)):
                pixel_cache[image_id] = row
        pixels = torch.stack([pixel_cache[image_id] for image_id in image_ids])
        answers = vlm.answer_yes_no(pixels, [question["text"] for question in questions])
        metrics = score_pope([question["label"] for question in questions], answers)
        results[strategy] = metrics.to_dict()
    return results


def pope_images_available(world: World, split: str) -> int:
    """Return how many images of a split have the three distinct categories a POPE image needs."""
    return sum(len(set(world.objects(split, image_id))) >= 3 for image_id in world.image_ids(split))
