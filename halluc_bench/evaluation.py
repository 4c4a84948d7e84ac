"""Evaluate a model on the hallucination tasks of one COCO-format split.

The questions, images and ground truth are fixed once in an :class:`EvaluationSet`, so every
model of an audit (base, unlearned, attacked) is scored on exactly the same items with the
same metric functions that ``halluc-bench score`` uses on real model outputs.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.tasks import pope
from halluc_bench.tasks.chair import ChairEvaluator
from halluc_bench.tasks.definitions import TaskDefinition
from halluc_bench.tasks.mme_eval import MmeEvalSet, build_mme_set, evaluate_mme
from halluc_bench.world.coco import World

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSet:
    """The fixed items every model of one audit is scored on."""

    split: str
    pope_questions: dict[str, list[dict]]  # strategy -> official-format question records
    pope_image_ids: dict[str, list[int]]  # strategy -> image id of each question
    caption_image_ids: list[int]
    pixels: dict[int, torch.Tensor] = field(repr=False)  # image_id -> (3, height, width)
    chair: ChairEvaluator = field(repr=False)
    pope_definition: TaskDefinition = field(repr=False)
    chair_definition: TaskDefinition = field(repr=False)
    mme: MmeEvalSet | None = field(default=None, repr=False)  # None when the run skips MME

    def versions(self) -> dict[str, int]:
        versions = {"pope": self.pope_definition.version, "chair": self.chair_definition.version}
        if self.mme is not None:
            versions["mme"] = self.mme.version
        return versions


def build_evaluation_set(
    world: World,
    split: str,
    vlm: VisionLanguageModel,
    pope_definition: TaskDefinition,
    chair_definition: TaskDefinition,
    seed: int,
    pope_images: int | None = None,
    caption_images: int | None = None,
    pope_strategies: Sequence[str] | None = None,
    mme_definition: TaskDefinition | None = None,
) -> EvaluationSet:
    """Build POPE questions and pick caption images from ``split``, and preprocess their pixels once.

    ``pope_images`` and ``caption_images`` override the image counts of the task definitions.
    ``pope_strategies`` overrides the definition's strategies; an empty sequence builds a
    captions-only set (for CHAIR alone). With ``mme_definition`` the set also contains MME-style
    questions (existence, count, position, color) for the first ``images`` images per subtask.
    """
    coco = world.coco(split)
    id_by_file = {image["file_name"]: image_id for image_id, image in coco.imgs.items()}
    questions, question_image_ids = {}, {}
    strategies = pope_definition["strategies"] if pope_strategies is None else list(pope_strategies)
    for strategy in strategies:
        records = pope.build_pope(coco, strategy=strategy, n_images=pope_images or pope_definition["images"], seed=seed)
        questions[strategy] = records
        question_image_ids[strategy] = [id_by_file[record["image"]] for record in records]
    all_ids = sorted(world.image_ids(split))
    count = min(int(caption_images or chair_definition["images"]), len(all_ids))
    caption_ids = sorted(random.Random(seed).sample(all_ids, count))
    needed = sorted(set(caption_ids).union(*question_image_ids.values()))
    images = [world.load_image(split, image_id) for image_id in needed]
    pixel_rows = vlm.pixel_values(images)
    chair = ChairEvaluator.from_coco(
        [world.instances_path(split)], [world.captions_path(split)], lemmatizer=chair_definition["lemmatizer"]
    )
    mme_set = None
    if mme_definition is not None:
        mme_set = limit_mme_images(build_mme_set(world, split, mme_definition, seed), int(mme_definition["images"]))
        mme_set.ensure_pixels(vlm)
    return EvaluationSet(
        split=split,
        mme=mme_set,
        pope_questions=questions,
        pope_image_ids=question_image_ids,
        caption_image_ids=caption_ids,
        pixels=dict(zip(needed, pixel_rows)),
        chair=chair,
        pope_definition=pope_definition,
        chair_definition=chair_definition,
    )


def limit_mme_images(mme_set: MmeEvalSet, images: int) -> MmeEvalSet:
    """Keep the first ``images`` images (two adjacent questions each) of every MME subtask."""
    if images < 1:
        raise ValueError(f"MME images per subtask must be positive, got {images}")
    mme_set.lines = {subtask: lines[: 2 * images] for subtask, lines in mme_set.lines.items()}
    mme_set.image_ids = {subtask: ids[: 2 * images] for subtask, ids in mme_set.image_ids.items()}
    return mme_set


def evaluate_pope(vlm: VisionLanguageModel, eval_set: EvaluationSet, strategies: list[str] | None = None) -> dict:
    """Answer every POPE question of the given strategies and score them; returns metrics by strategy."""
    results = {}
    for strategy in strategies or list(eval_set.pope_questions):
        records = eval_set.pope_questions[strategy]
        pixels = torch.stack([eval_set.pixels[i] for i in eval_set.pope_image_ids[strategy]])
        answers = vlm.answer_yes_no(pixels, [record["text"] for record in records])
        metrics = pope.score_pope([record["label"] for record in records], answers, parser=eval_set.pope_definition["parser"])
        results[strategy] = metrics.to_dict()
    return results


def caption_images(vlm: VisionLanguageModel, eval_set: EvaluationSet) -> list[tuple[int, str]]:
    """Generate one caption for each caption image of the evaluation set."""
    definition = eval_set.chair_definition
    pixels = torch.stack([eval_set.pixels[i] for i in eval_set.caption_image_ids])
    captions = vlm.generate_captions(pixels, definition["instruction"], max_new_tokens=int(definition["max_new_tokens"]))
    return list(zip(eval_set.caption_image_ids, captions))


def evaluate_chair(vlm: VisionLanguageModel, eval_set: EvaluationSet) -> dict:
    """Caption the evaluation images and score CHAIR; returns overall metrics and the captions."""
    captions = caption_images(vlm, eval_set)
    report = eval_set.chair.score(captions)
    overall = {key: value for key, value in report.to_dict().items() if key in ("chair_s", "chair_i", "recall", "len", "n")}
    return {**overall, "captions": [{"image_id": image_id, "caption": caption} for image_id, caption in captions]}


def evaluate(vlm: VisionLanguageModel, eval_set: EvaluationSet, pope_strategies: list[str] | None = None) -> dict:
    """Score CHAIR, POPE and (when the set has it) MME; the result keeps captions so that every number can be re-checked."""
    chair = evaluate_chair(vlm, eval_set)
    pope_metrics = evaluate_pope(vlm, eval_set, pope_strategies)
    result = {"chair": chair, "pope": pope_metrics, "task_versions": eval_set.versions()}
    if eval_set.mme is not None:
        result["mme"] = evaluate_mme(vlm, eval_set.mme)
    return result
