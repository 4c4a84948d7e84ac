"""MME existence, count, position and color on a COCO-format world, answered by a vision-language model.

The questions are the eval-tool lines of ``halluc_bench.world.build_mme_lines`` worded by the
``mme`` task definition: each template is followed by the definition's ``answer_suffix``, and
the resulting text is exactly what the model is asked. Answers are scored by
``halluc_bench.tasks.mme.score_mme``, the scorer of real LLaVA outputs, so the numbers of a
toy-world run and of a real MME run follow the same rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.tasks.definitions import TaskDefinition
from halluc_bench.tasks.mme import MmeRecord, score_mme
from halluc_bench.world import DEFAULT_MME_TEMPLATES, MME_SUBTASKS, World, build_mme_lines
from halluc_bench.world._io import write_bytes_atomic

logger = logging.getLogger(__name__)

# Existence asks about absent objects, so a wrong "Yes" there is an object hallucination. The
# other subtasks ask about objects that are present and check that perception survives unlearning.
HALLUCINATION_SUBTASKS: tuple[str, ...] = ("existence",)
PRESERVED_PERCEPTION_SUBTASKS: tuple[str, ...] = ("count", "position", "color")


def definition_templates(definition: TaskDefinition) -> dict[str, str]:
    """Return the definition's question templates, each followed by its ``answer_suffix``.

    The definition must give every template key that ``build_mme_lines`` uses, so that no
    question silently takes a built-in wording. Braces in the suffix are escaped, so the suffix
    is appended literally.
    """
    templates = definition["templates"]
    suffix = definition["answer_suffix"]
    if not isinstance(templates, dict):
        raise ValueError(f"{definition.source}: 'templates' must be a mapping of template key to text, "
                         f"got {type(templates).__name__}")
    if not isinstance(suffix, str):
        raise ValueError(f"{definition.source}: 'answer_suffix' must be a string, got {suffix!r}")
    missing = [key for key in DEFAULT_MME_TEMPLATES if key not in templates]
    if missing:
        raise ValueError(f"{definition.source}: 'templates' lacks {', '.join(missing)}; "
                         f"the MME questions need every key of {', '.join(DEFAULT_MME_TEMPLATES)}")
    escaped_suffix = suffix.replace("{", "{{").replace("}", "}}")
    worded = {}
    for key, template in templates.items():
        if not isinstance(template, str):
            raise ValueError(f"{definition.source}: template {key!r} must be a string, got {template!r}")
        worded[key] = template + escaped_suffix
    return worded


@dataclass
class MmeEvalSet:
    """The fixed MME questions of one split, with the preprocessed pixels of their images.

    ``lines`` contains eval-tool lines ``file_name <TAB> question <TAB> Yes|No``, the two
    questions of an image adjacent, and ``image_ids[subtask][i]`` is the image of line ``i``.
    A subtask that no image of the split supports (color on real COCO) has no lines.
    """

    split: str
    definition: TaskDefinition = field(repr=False)
    lines: dict[str, list[str]]
    image_ids: dict[str, list[int]]
    world: World = field(repr=False)
    pixels: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # image id -> (3, height, width)
    pixels_processor: str | None = field(default=None, repr=False)  # image-processor config the pixels came from

    @property
    def version(self) -> int:
        return self.definition.version

    @property
    def subtasks(self) -> list[str]:
        """Return the subtasks that have questions, in the standard order."""
        return [subtask for subtask in MME_SUBTASKS if self.lines.get(subtask)]

    def questions(self, subtask: str) -> list[str]:
        """Return the question texts of ``subtask`` in line order, as asked of the model."""
        return [line.split("\t")[1] for line in self.lines[subtask]]

    def records(self, subtask: str, answers: list[str] | None = None) -> list[MmeRecord]:
        """Return the lines of ``subtask`` as MME records, with ``answers`` in line order when given."""
        lines = self.lines[subtask]
        if answers is not None and len(answers) != len(lines):
            raise ValueError(f"got {len(answers)} answers for the {len(lines)} {subtask} questions")
        records = []
        for index, line in enumerate(lines):
            image, question, label = line.split("\t")
            answer = None if answers is None else answers[index]
            records.append(MmeRecord(subtask, image, question, label.lower(), answer, f"{subtask}.txt:{index + 1}"))
        return records

    def all_image_ids(self) -> list[int]:
        """Return the sorted ids of every image that a question refers to."""
        return sorted({image_id for ids in self.image_ids.values() for image_id in ids})

    def ensure_pixels(self, vlm: VisionLanguageModel) -> dict[int, torch.Tensor]:
        """Preprocess every question image with ``vlm``'s image processor, once per processor config."""
        processor = _processor_config(vlm)
        if self.pixels and self.pixels_processor == processor:
            return self.pixels
        if self.pixels:
            logger.info("model %s preprocesses images differently; preprocessing the MME images again", vlm.name)
        image_ids = self.all_image_ids()
        images = [self.world.load_image(self.split, image_id) for image_id in image_ids]
        self.pixels = dict(zip(image_ids, vlm.pixel_values(images)))
        self.pixels_processor = processor
        return self.pixels

    def write_key(self, folder: str | Path) -> dict[str, Path]:
        """Write FOLDER/{subtask}.txt, the eval-tool answer key, for every subtask with questions."""
        folder = Path(folder)
        written = {}
        for subtask in self.subtasks:
            path = folder / f"{subtask}.txt"
            write_bytes_atomic(path, ("\n".join(self.lines[subtask]) + "\n").encode("utf-8"))
            written[subtask] = path
        return written


def _processor_config(vlm: VisionLanguageModel) -> str:
    image_processor = vlm.processor.image_processor
    to_json = getattr(image_processor, "to_json_string", None)
    return to_json() if callable(to_json) else repr(image_processor)


def build_mme_set(
    world: World,
    split: str,
    definition: TaskDefinition,
    seed: int,
    vlm: VisionLanguageModel | None = None,
) -> MmeEvalSet:
    """Build the MME questions of ``split`` worded by ``definition``.

    With ``vlm`` the images are preprocessed now; otherwise on the first ``evaluate_mme``.
    The same world, split, definition and seed always give the same questions.
    """
    if definition.name != "mme":
        raise ValueError(f"build_mme_set needs the 'mme' task definition, got {definition.name!r} ({definition.source})")
    lines = build_mme_lines(world, split, definition_templates(definition), seed=seed)
    id_by_file = world.image_id_by_file_name(split)
    image_ids = {subtask: [id_by_file[line.split("\t")[0]] for line in subtask_lines]
                 for subtask, subtask_lines in lines.items()}
    mme_set = MmeEvalSet(split=split, definition=definition, lines=lines, image_ids=image_ids, world=world)
    for subtask in MME_SUBTASKS:
        logger.info("MME %s on split %r: %d images", subtask, split, len(lines[subtask]) // 2)
    if vlm is not None:
        mme_set.ensure_pixels(vlm)
    return mme_set


def evaluate_mme(vlm: VisionLanguageModel, mme_set: MmeEvalSet, batch_size: int = 64) -> dict[str, Any]:
    """Answer every MME question with ``vlm.answer_yes_no`` and score it with the official MME rules.

    Returns ``{"subtasks": {name: {"acc", "acc_plus", "score", "n"}}, "existence": score,
    "count": score, "position": score, "color": score, "task_version": version}``. ``acc`` and
    ``acc_plus`` are fractions, ``score`` = 100 * (acc + acc_plus) on the 0-200 scale and ``n``
    counts questions. The existence score measures object hallucination, because its No
    question names an absent object; count, position and color measure preserved
    perception. A subtask without questions is left out of ``subtasks`` and its score is None.
    """
    pixels = mme_set.ensure_pixels(vlm)
    records: list[MmeRecord] = []
    for subtask in tqdm(mme_set.subtasks, desc=f"MME {vlm.name}", unit="subtask", leave=False, disable=None):
        images = torch.stack([pixels[image_id] for image_id in mme_set.image_ids[subtask]])  # (questions, 3, h, w)
        answers = vlm.answer_yes_no(images, mme_set.questions(subtask), batch_size=batch_size)
        records.extend(mme_set.records(subtask, answers))
    if not records:
        raise ValueError(f"split {mme_set.split!r} has no MME questions: no image has an annotation")
    report = score_mme(records)
    result: dict[str, Any] = {"subtasks": {}}
    for name, score in report.subtasks.items():
        result["subtasks"][name] = {"acc": score.acc, "acc_plus": score.acc_plus, "score": score.score, "n": score.n}
    for subtask in MME_SUBTASKS:
        result[subtask] = result["subtasks"][subtask]["score"] if subtask in result["subtasks"] else None
    result["task_version"] = mme_set.version
    return result
