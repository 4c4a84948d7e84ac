"""Build a small LLaVA-architecture model with a word-level tokenizer, from scratch and offline.

The model is a real ``LlavaForConditionalGeneration`` (CLIP vision tower, MLP projector,
Llama decoder), so it saves with ``save_pretrained`` and loads back through
``AutoModelForImageTextToText`` / ``AutoProcessor`` like any Hugging Face checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)

# LLaVA-1.5's conversation format, so prompts read the same for the organism and real checkpoints.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
TEMPLATE_WORDS = ("USER", "ASSISTANT", ":", "?", ".", ",")


@dataclass(frozen=True)
class TinyLlavaConfig:
    """Sizes of a tiny LLaVA. Defaults give about 2M parameters, trainable on 2 CPU cores in minutes."""

    vocabulary: tuple[str, ...] = field(default_factory=tuple)
    image_size: int = 64  # pixels per side
    patch_size: int = 8  # pixels per side of one vision patch
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 3
    text_heads: int = 4
    intermediate_factor: int = 3  # MLP width = factor * hidden
    max_positions: int = 256  # tokens, image tokens included
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for name in ("vision_hidden", "text_hidden"):
            heads = getattr(self, name.replace("hidden", "heads"))
            if getattr(self, name) % heads:
                raise ValueError(f"{name} {getattr(self, name)} must be divisible by its head count {heads}")
        n_image_tokens = (self.image_size // self.patch_size) ** 2
        if self.max_positions <= n_image_tokens:
            raise ValueError(f"max_positions {self.max_positions} leaves no room after {n_image_tokens} image tokens")

    @property
    def n_image_tokens(self) -> int:
        """Image tokens per image in the prompt: one per patch (the CLS feature is dropped)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer over ``words`` plus the special and chat-template tokens.

    Pre-tokenization splits on whitespace and punctuation, so "left." is "left" and ".".
    Unknown words map to ``<unk>``. Decoding joins tokens with spaces.
    """
    ordered: list[str] = list(SPECIAL_TOKENS)
    for word in (*TEMPLATE_WORDS, *words):
        for piece in pre_tokenizers.Whitespace().pre_tokenize_str(word):
            if piece[0] not in ordered:
                ordered.append(piece[0])
    vocab = {word: index for index, word in enumerate(ordered)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
    )
    return tokenizer


def build_processor(config: TinyLlavaConfig) -> LlavaProcessor:
    """Build the processor: CLIP-style image preprocessing at ``image_size`` and the word tokenizer."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_word_tokenizer(config.vocabulary),
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        # The CLIP tower emits a CLS feature in front of the patches; "default" drops it.
        num_additional_image_tokens=1,
    )


def build_tiny_llava(config: TinyLlavaConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a randomly initialised tiny LLaVA and its processor, seeded by ``config.seed``."""
    processor = build_processor(config)
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=config.intermediate_factor * config.vision_hidden,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.intermediate_factor * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=config.n_image_tokens,
        vision_feature_select_strategy="default",
        # The last layer's features: a tiny tower has too few layers to skip one.
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor
