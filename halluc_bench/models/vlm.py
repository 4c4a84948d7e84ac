"""A thin, model-agnostic wrapper around any Hugging Face image-text-to-text checkpoint.

Every stage of the audit talks to a model through :class:`VisionLanguageModel`: prompts come
from the processor's chat template, token-level training labels are built from character
spans, captions come from greedy ``generate``, and yes/no answers from the next-token logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that cross-entropy skips
Span = tuple[int, int]  # character offsets [start, end) inside a target text


@dataclass
class TokenBatch:
    """Model inputs with token-level training labels.

    ``labels`` equals ``input_ids`` on the tokens that are trained or scored and
    ``IGNORE_INDEX`` elsewhere; nothing is shifted yet.
    """

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    pixel_values: torch.Tensor  # (batch, 3, height, width)
    labels: torch.Tensor  # (batch, seq)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Return the keyword arguments of the model's forward pass (labels excluded)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "pixel_values": self.pixel_values}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TokenBatch":
        pixels = self.pixel_values.to(device=device, dtype=dtype) if dtype else self.pixel_values.to(device)
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), pixels, self.labels.to(device))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-token log-probabilities of the next-token labels, in fp32, and their mask.

    ``logits`` is (batch, seq, vocab) and ``labels`` (batch, seq) unshifted; both outputs are
    (batch, seq - 1). Positions whose label is ``IGNORE_INDEX`` get 0 and mask False.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    safe_labels = shifted_labels.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(shifted_logits, dim=-1)
    picked = log_probs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


class VisionLanguageModel:
    """A Hugging Face vision-language model and its processor, used the same way for any checkpoint."""

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str = "model"):
        self.model = model
        self.processor = processor
        self.name = name
        self._image_token_count: int | None = None

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ----------------------------------------------------------------- prompts and pixels
    def prompt(self, question: str) -> str:
        """Return the generation prompt for one image and ``question`` from the processor's chat template."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def pixel_values(self, images: Sequence[Image.Image], batch_size: int = 256) -> torch.Tensor:
        """Preprocess ``images`` once; callers cache the result instead of re-running the processor."""
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            chunks.append(self.processor.image_processor(images=batch, return_tensors="pt")["pixel_values"])
        return torch.cat(chunks) if chunks else torch.empty(0)

    @property
    def image_token_count(self) -> int:
        """Number of image tokens one ``<image>`` placeholder expands to, measured on a blank image."""
        if self._image_token_count is None:
            size = self.processor.image_processor.crop_size or self.processor.image_processor.size
            side = size.get("height") or size.get("shortest_edge")
            probe = self.processor(images=[Image.new("RGB", (side, side))], text=["<image>"], return_tensors="pt")
            image_token_id = self._image_token_id()
            self._image_token_count = int((probe["input_ids"] == image_token_id).sum())
        return self._image_token_count

    def _image_token_id(self) -> int:
        token = getattr(self.processor, "image_token", "<image>")
        return int(self.tokenizer.convert_tokens_to_ids(token))

    def _expand(self, text: str) -> str:
        token = getattr(self.processor, "image_token", "<image>")
        return text.replace(token, token * self.image_token_count)

    # ----------------------------------------------------------------- training batches
    def encode(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        pixel_values: torch.Tensor,
        label_spans: Sequence[Sequence[Span] | None] | None = None,
        exclude_spans: Sequence[Sequence[Span]] | None = None,
    ) -> TokenBatch:
        """Tokenize ``prompt + target`` pairs and label the target tokens.

        ``label_spans[i]`` (character spans inside ``targets[i]``) limits the labels to tokens
        that overlap a span; ``None`` labels every target token. ``exclude_spans[i]`` removes
        tokens that overlap any of its spans. The end-of-sequence token after a target is
        labelled only when the whole target is (no ``label_spans``).
        """
        if not (len(prompts) == len(targets) == len(pixel_values)):
            raise ValueError(f"got {len(prompts)} prompts, {len(targets)} targets and {len(pixel_values)} images")
        eos = self.tokenizer.eos_token or ""
        texts, starts = [], []
        for prompt, target in zip(prompts, targets):
            expanded = self._expand(prompt) + " "
            starts.append(len(expanded))
            texts.append(expanded + target + eos)
        encoded = self.tokenizer(
            texts, return_tensors="pt", padding=True, return_offsets_mapping=True, add_special_tokens=True
        )
        offsets = encoded.pop("offset_mapping")  # (batch, seq, 2)
        labels = torch.full_like(encoded["input_ids"], IGNORE_INDEX)
        for row, (start, target) in enumerate(zip(starts, targets)):
            spans = None if label_spans is None else label_spans[row]
            excluded = () if exclude_spans is None else exclude_spans[row]
            end_of_target = start + len(target)
            for column, (token_start, token_end) in enumerate(offsets[row].tolist()):
                if encoded["attention_mask"][row, column] == 0 or token_end <= token_start:
                    continue
                if token_start < start:
                    continue
                if token_start >= end_of_target:  # the end-of-sequence marker
                    if spans is None:
                        labels[row, column] = encoded["input_ids"][row, column]
                    continue
                local = (token_start - start, token_end - start)
                if spans is not None and not _overlaps_any(local, spans):
                    continue
                if _overlaps_any(local, excluded):
                    continue
                labels[row, column] = encoded["input_ids"][row, column]
        return TokenBatch(encoded["input_ids"], encoded["attention_mask"], pixel_values, labels)

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def generate_captions(
        self, pixel_values: torch.Tensor, question: str, max_new_tokens: int = 32, batch_size: int = 64
    ) -> list[str]:
        """Generate one caption per image by greedy decoding."""
        prompt = self._expand(self.prompt(question))
        captions: list[str] = []
        self.model.eval()
        for chunk in _chunks(len(pixel_values), batch_size):
            pixels = pixel_values[chunk].to(self.device, self.model.dtype)
            encoded = self.tokenizer([prompt] * len(pixels), return_tensors="pt").to(self.device)
            output = self.model.generate(
                **encoded, pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            captions.extend(text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return captions

    @torch.no_grad()
    def yes_probabilities(
        self, pixel_values: torch.Tensor, questions: Sequence[str], batch_size: int = 64
    ) -> torch.Tensor:
        """Return p(yes) / (p(yes) + p(no)) for the first answer token of each question, in fp32.

        One forward pass per batch; the answer is read from the logits at the last prompt
        position, which equals the first token greedy decoding would choose between the two.
        """
        if len(questions) != len(pixel_values):
            raise ValueError(f"got {len(questions)} questions for {len(pixel_values)} images")
        yes_ids, no_ids = self._answer_token_ids("yes"), self._answer_token_ids("no")
        self.model.eval()
        probabilities = []
        padding_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # the last position is then the prompt's last token
        try:
            for chunk in _chunks(len(questions), batch_size):
                texts = [self._expand(self.prompt(questions[i])) for i in range(chunk.start, chunk.stop)]
                encoded = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
                pixels = pixel_values[chunk].to(self.device, self.model.dtype)
                logits = self.model(**encoded, pixel_values=pixels).logits[:, -1, :].float()  # (batch, vocab)
                yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
                no = torch.logsumexp(logits[:, no_ids], dim=-1)
                probabilities.append(torch.sigmoid(yes - no).cpu())
        finally:
            self.tokenizer.padding_side = padding_side
        return torch.cat(probabilities) if probabilities else torch.empty(0)

    def answer_yes_no(self, pixel_values: torch.Tensor, questions: Sequence[str], batch_size: int = 64) -> list[str]:
        """Answer each question "Yes" or "No", whichever first token is more likely."""
        return ["Yes" if p >= 0.5 else "No" for p in self.yes_probabilities(pixel_values, questions, batch_size)]

    def _answer_token_ids(self, word: str) -> list[int]:
        ids = set()
        for variant in (word, word.capitalize(), " " + word, " " + word.capitalize()):
            pieces = self.tokenizer.encode(variant, add_special_tokens=False)
            if pieces and pieces[0] != self.tokenizer.unk_token_id:
                ids.add(pieces[0])
        if not ids:
            raise ValueError(f"the tokenizer of {self.name!r} has no token for the answer {word!r}")
        return sorted(ids)


def _overlaps_any(span: Span, spans: Sequence[Span]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in spans)


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
