"""Training examples, their one-time tokenization, and the seeded draw of each step's batch.

Tokenizing every batch with ``VisionLanguageModel.encode`` costs more than a training step of
the organism on CPU, so :class:`TokenizedExamples` tokenizes each distinct prompt and target
once and builds batches by concatenating token ids. That is exact for tokenizers that split
``prompt + " " + target`` at the space, such as the organism's word-level tokenizer, and the
constructor checks it against ``encode`` on a sample of the examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from halluc_bench.models.vlm import IGNORE_INDEX, TokenBatch, VisionLanguageModel

ExampleKind = Literal["caption", "yes_no"]
CHECKED_EXAMPLES = 8  # examples of each kind compared with VisionLanguageModel.encode


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
            raise ValueError("training data contains no caption examples; pass at least one")
        for example in (*self.captions, *self.yes_no):
            if not 0 <= example.image < len(self.pixel_values):
                raise ValueError(
                    f"example {example.question!r} -> {example.target!r} uses image row {example.image}, "
                    f"but pixel_values has {len(self.pixel_values)} rows"
                )
            if not example.target.strip():
                raise ValueError(f"example {example.question!r} of image row {example.image} has an empty target")


class TokenizedExamples:
    """Token ids of a model's prompts and targets, computed once, and batches built from them."""

    def __init__(self, vlm: VisionLanguageModel, data: TrainingData):
        self.vlm = vlm
        self.data = data
        tokenizer = vlm.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
        examples = (*data.captions, *data.yes_no)
        image_token = getattr(vlm.processor, "image_token", "<image>")
        questions = sorted({example.question for example in examples})
        prompts = [vlm.prompt(question).replace(image_token, image_token * vlm.image_token_count) for question in questions]
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        self.prompt_ids = dict(zip(questions, prompt_ids))
        targets = sorted({example.target for example in examples})
        target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
        self.target_ids = dict(zip(targets, target_ids))
        self._check_against_encode()

    def batch(self, examples: Sequence[TrainingExample]) -> TokenBatch:
        """Return the right-padded batch of ``examples``, labelled on target and end-of-sequence tokens."""
        sequences, label_rows = [], []
        for example in examples:
            prompt = self.prompt_ids[example.question]
            target = self.target_ids[example.target] + self.eos_ids
            sequences.append(prompt + target)
            label_rows.append([IGNORE_INDEX] * len(prompt) + target)
        length = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, (sequence, label_row) in enumerate(zip(sequences, label_rows)):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            labels[row, : len(sequence)] = torch.tensor(label_row)
            attention_mask[row, : len(sequence)] = 1
        rows = torch.tensor([example.image for example in examples])
        return TokenBatch(input_ids, attention_mask, self.data.pixel_values[rows], labels)

    def _check_against_encode(self) -> None:
        sample = [*self.data.captions[:CHECKED_EXAMPLES], *self.data.yes_no[:CHECKED_EXAMPLES]]
        for example in sample:
            fast = self.batch([example])
            reference = self.vlm.encode([self.vlm.prompt(example.question)], [example.target], fast.pixel_values)
            if not (torch.equal(fast.input_ids, reference.input_ids) and torch.equal(fast.labels, reference.labels)):
                raise ValueError(
                    f"the tokenizer of {self.vlm.name!r} does not split {example.question!r} + {example.target!r} "
                    "at the space between prompt and target; train this model with VisionLanguageModel.encode batches"
                )


def draw_rows(data: TrainingData, batch_size: int, yes_no_count: int, seed: int, step: int) -> list[TrainingExample]:
    """Return the examples of 0-based ``step``: ``yes_no_count`` yes/no examples, the rest captions.

    Rows are drawn with replacement from a generator seeded by ``seed`` and ``step`` alone, so a
    resumed run draws the same batches as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n_yes_no = yes_no_count if data.yes_no else 0
    caption_rows = torch.randint(len(data.captions), (batch_size - n_yes_no,), generator=generator).tolist()
    batch = [data.captions[row] for row in caption_rows]
    if n_yes_no:
        yes_no_rows = torch.randint(len(data.yes_no), (n_yes_no,), generator=generator).tolist()
        batch.extend(data.yes_no[row] for row in yes_no_rows)
    return batch
