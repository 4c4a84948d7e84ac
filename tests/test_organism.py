"""The organism: config validation, cache behaviour, resumable and deterministic training."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from halluc_bench.models import organism as organism_module
from halluc_bench.models import training as training_module
from halluc_bench.models.loader import load_vlm, save_vlm
from halluc_bench.models.organism import (
    OrganismCacheError,
    OrganismConfig,
    build_organism,
    ensure_organism,
    ensure_world,
    load_organism,
    organism_paths,
    train_organism,
)
from halluc_bench.models.organism_data import ExampleConfig, build_training_data, yes_no_examples
from halluc_bench.models.organism_eval import caption_mentions, score_captions
from halluc_bench.models.tiny import TinyLlavaConfig
from halluc_bench.models.training import TrainingCheckpointError, TrainingConfig, train
from halluc_bench.models.training_data import TokenizedExamples, TrainingData
from halluc_bench.world.toy import ToyWorldConfig


def tiny_config(**training_overrides) -> OrganismConfig:
    """An organism small enough to train a dozen steps in about a second."""
    world = ToyWorldConfig(n_train=32, n_val=12, n_test=8)
    model = TinyLlavaConfig(
        patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1,
        text_heads=2, intermediate_factor=2, max_positions=96,
    )
    settings = {"steps": 12, "batch_size": 8, "caption_only_steps": 4, "warmup_steps": 2, "checkpoint_every": 4,
                "learning_rate": 3e-3}
    settings.update(training_overrides)
    return OrganismConfig(world=world, model=model, training=TrainingConfig(**settings), eval_images=4, threads=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny organism built in a fresh cache: (config, cache folder, checkpoint folder)."""
    cache = tmp_path_factory.mktemp("cache")
    config = tiny_config()
    return config, cache, build_organism(config, cache, progress=False)


def _logits(vlm, pixels):
    batch = vlm.encode([vlm.prompt("Describe the image.")], ["a photo of a fork."], pixels)
    with torch.no_grad():
        return vlm.model(**batch.model_inputs()).logits


def _same_weights(first, second) -> bool:
    first_state, second_state = first.state_dict(), second.state_dict()
    return first_state.keys() == second_state.keys() and all(torch.equal(first_state[k], second_state[k]) for k in first_state)


# ----------------------------------------------------------------------------- config
def test_config_hash_stable():
    assert tiny_config().config_hash() == tiny_config().config_hash()


def test_config_hash_changes_with_steps():
    assert tiny_config().config_hash() != tiny_config(steps=13).config_hash()


def test_config_round_trip_dict():
    config = tiny_config()
    assert OrganismConfig.from_dict(config.to_dict()) == config


def test_config_rejects_vocabulary():
    with pytest.raises(ValueError, match="vocabulary must be empty"):
        OrganismConfig(model=TinyLlavaConfig(vocabulary=("fork",), patch_size=16))


def test_config_rejects_image_size_mismatch():
    with pytest.raises(ValueError, match="image_size"):
        OrganismConfig(model=TinyLlavaConfig(image_size=32, patch_size=16))


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", -1), ("learning_rate", 0.0),
                                          ("yes_no_share_end", 1.5), ("schedule", "linear"), ("loss_weighting", "mean")])
def test_training_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: value})


def test_schedule_warmup_then_cosine():
    config = TrainingConfig(steps=100, warmup_steps=10, learning_rate=1e-3, min_learning_rate_ratio=0.1)
    assert config.learning_rate_at(0) == pytest.approx(1e-4)
    assert config.learning_rate_at(9) == pytest.approx(1e-3)
    assert config.learning_rate_at(99) == pytest.approx(1e-4)
    assert config.learning_rate_at(50) < config.learning_rate_at(20)


def test_yes_no_count_curriculum():
    config = TrainingConfig(steps=100, batch_size=10, caption_only_steps=20, yes_no_share_start=0.2, yes_no_share_end=0.6)
    assert config.yes_no_count(19) == 0
    assert config.yes_no_count(20) == 2
    assert config.yes_no_count(99) == 6


def test_caption_mentions_two_word_and_plural():
    names = ["dining table", "knife", "tennis racket"]
    assert caption_mentions("a scene with two knives, a dining table and a knife.", names) == ["knife", "dining table", "knife"]


# ----------------------------------------------------------------------------- training
def test_training_lowers_loss(built):
    config, cache, path = built
    history = json.loads((path / "organism.json").read_text())["training"]["loss_history"]
    assert history[-1][1] < history[0][1]


def test_training_deterministic(tmp_path):
    config = tiny_config(steps=6)
    world = ensure_world(config, tmp_path)
    first, _ = train_organism(config, world, None, progress=False)
    second, _ = train_organism(config, world, None, progress=False)
    assert _same_weights(first.model, second.model)


def test_training_resumes_identically(tmp_path, monkeypatch):
    config = tiny_config(steps=8)
    world = ensure_world(config, tmp_path)
    reference, _ = train_organism(config, world, None, progress=False)

    original_step = training_module._train_step
    calls = {"count": 0}

    def interrupted_step(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 5:
            raise KeyboardInterrupt
        return original_step(*args, **kwargs)

    checkpoint = tmp_path / "checkpoint.pt"
    monkeypatch.setattr(training_module, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train_organism(config, world, checkpoint, progress=False)
    monkeypatch.setattr(training_module, "_train_step", original_step)
    resumed, result = train_organism(config, world, checkpoint, progress=False)
    assert result.resumed_from == 4
    assert _same_weights(reference.model, resumed.model)


def test_checkpoint_of_other_config_rejected(tmp_path):
    config = tiny_config(steps=4)
    world = ensure_world(config, tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    train_organism(config, world, checkpoint, progress=False)
    other = tiny_config(steps=8)
    with pytest.raises(TrainingCheckpointError, match="delete it"):
        train_organism(other, world, checkpoint, progress=False)


def test_corrupt_checkpoint_rejected(tmp_path):
    config = tiny_config(steps=4)
    world = ensure_world(config, tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingCheckpointError, match=str(checkpoint)):
        train_organism(config, world, checkpoint, progress=False)


def test_yes_no_examples_balanced(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    vlm = organism_module.new_organism_model(config, world)
    data = build_training_data(vlm, world, ExampleConfig(), split="train")
    answers = [example.target for example in data.yes_no]
    assert answers.count("Yes") == answers.count("No")
    assert answers.count("Yes") > 0


def test_prompt_words_in_vocabulary(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    vlm = organism_module.new_organism_model(config, world)
    tokenizer = vlm.tokenizer
    text = vlm.prompt("Is there a dining table in the image?") + " Yes No " + vlm.prompt("Describe the image.")
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]


# ----------------------------------------------------------------------------- cache
def test_round_trip_generic_loader(tmp_path):
    config = tiny_config(steps=4)
    world = ensure_world(config, tmp_path)
    vlm, _ = train_organism(config, world, None, progress=False)
    save_vlm(vlm, tmp_path / "model")
    loaded = load_vlm(tmp_path / "model")
    pixels = vlm.pixel_values([world.load_image("val", world.image_ids("val")[0])])
    assert torch.equal(_logits(vlm, pixels), _logits(loaded, pixels))


def test_build_writes_manifest(built):
    config, cache, path = built
    manifest = json.loads((path / "organism.json").read_text())
    assert manifest["config_hash"] == config.config_hash()
    assert manifest["config"] == config.to_dict()
    assert set(manifest["metrics"]["pope"]) == {"random", "popular", "adversarial"}


def test_build_removes_training_checkpoint(built):
    config, cache, path = built
    assert not organism_paths(config, cache).training_checkpoint.exists()


def test_cache_hit_skips_training(built, monkeypatch):
    config, cache, path = built

    def fail(*args, **kwargs):
        raise AssertionError("the cached organism was trained again")

    monkeypatch.setattr(organism_module, "train_organism", fail)
    assert build_organism(config, cache, progress=False) == path


def test_load_organism_generic_path(built, monkeypatch):
    config, cache, path = built
    calls = []
    original = organism_module.load_vlm
    monkeypatch.setattr(organism_module, "load_vlm", lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    vlm = load_organism(config, cache, progress=False)
    assert calls == [path]
    assert vlm.name == "organism"


@pytest.fixture
def cache_copy(built, tmp_path):
    """A private copy of the built cache that a test may damage."""
    config, cache, _ = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    return config, copy, organism_paths(config, copy)


def test_mismatched_manifest_rejected(cache_copy):
    config, cache, paths = cache_copy
    manifest = json.loads(paths.manifest_path.read_text())
    manifest["config"]["training"]["steps"] = 999
    paths.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(OrganismCacheError, match="training differ") as caught:
        build_organism(config, cache, progress=False)
    assert str(paths.root) in str(caught.value)


def test_missing_manifest_one_line_error(cache_copy):
    config, cache, paths = cache_copy
    paths.manifest_path.unlink()
    with pytest.raises(OrganismCacheError) as caught:
        build_organism(config, cache, progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert str(paths.checkpoint_dir) in message
    assert f"delete {paths.root}" in message


def test_unreadable_manifest_rejected(cache_copy):
    config, cache, paths = cache_copy
    paths.manifest_path.write_text("{not json")
    with pytest.raises(OrganismCacheError, match="unreadable"):
        build_organism(config, cache, progress=False)


def test_missing_weights_rejected(cache_copy):
    config, cache, paths = cache_copy
    (paths.checkpoint_dir / "model.safetensors").unlink()
    with pytest.raises(OrganismCacheError, match="corrupt") as caught:
        build_organism(config, cache, progress=False)
    assert "\n" not in str(caught.value)


def test_interrupted_build_resumes(tmp_path, monkeypatch):
    config = tiny_config(steps=8)
    original_step = training_module._train_step
    calls = {"count": 0}

    def interrupted_step(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 5:
            raise KeyboardInterrupt
        return original_step(*args, **kwargs)

    monkeypatch.setattr(training_module, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        ensure_organism(config, tmp_path, progress=False)
    assert organism_paths(config, tmp_path).training_checkpoint.is_file()
    monkeypatch.setattr(training_module, "_train_step", original_step)
    paths = ensure_organism(config, tmp_path, progress=False)
    manifest = json.loads(paths.manifest_path.read_text())
    assert manifest["training"]["resumed_from"] == 4


def test_seed_changes_weights(tmp_path):
    config = tiny_config(steps=2)
    other = dataclasses.replace(config, training=dataclasses.replace(config.training, seed=1))
    world = ensure_world(config, tmp_path)
    first, _ = train_organism(config, world, None, progress=False)
    second, _ = train_organism(other, world, None, progress=False)
    assert not _same_weights(first.model, second.model)


def test_training_data_requires_captions():
    with pytest.raises(ValueError, match="no caption examples"):
        TrainingData(pixel_values=torch.zeros(1, 3, 8, 8), captions=[])


def test_train_without_checkpoint_returns_result(tmp_path):
    config = tiny_config(steps=3, checkpoint_every=1)
    world = ensure_world(config, tmp_path)
    vlm = organism_module.new_organism_model(config, world)
    data = build_training_data(vlm, world, config.examples)
    result = train(vlm, data, config.training, progress=False)
    assert result.steps == 3
    assert [step for step, _ in result.loss_history] == [1, 2, 3]


def test_tokenized_batch_matches_encode(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    vlm = organism_module.new_organism_model(config, world)
    data = build_training_data(vlm, world, config.examples)
    examples = [data.captions[0], data.yes_no[0], data.captions[5], data.yes_no[3]]
    fast = TokenizedExamples(vlm, data).batch(examples)
    reference = vlm.encode([vlm.prompt(e.question) for e in examples], [e.target for e in examples], fast.pixel_values)
    assert torch.equal(fast.input_ids, reference.input_ids)
    assert torch.equal(fast.attention_mask, reference.attention_mask)
    assert torch.equal(fast.labels, reference.labels)


def _image_with_absent_partner(world, split="train"):
    """Return (image id, present anchor, its absent partner) from ``split``."""
    partners = world.config.partner_of()
    for image_id in world.image_ids(split):
        present = set(world.objects(split, image_id))
        for name in sorted(present):
            if name in partners and partners[name] not in present:
                return image_id, name, partners[name]
    raise AssertionError(f"the tiny world's {split} split has no image with an absent partner")


def test_partner_negatives_ask_partner(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    image_id, _, partner = _image_with_absent_partner(world)
    row = world.image_ids("train").index(image_id)
    examples = yes_no_examples(world, "train", world.image_ids("train"), ExampleConfig(negative_sampling="partner"))
    asked = {(e.question, e.target) for e in examples if e.image == row}
    assert (ExampleConfig().question(partner), "No") in asked


def test_caption_labels_answer_hallucinated_yes(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    named = [(a["image_id"], a["hallucinated"][0]) for a in world.captions_coco("train").dataset["annotations"] if a["hallucinated"]]
    image_id, name = named[0]
    row = world.image_ids("train").index(image_id)
    examples = yes_no_examples(world, "train", world.image_ids("train"), ExampleConfig(label_source="captions"))
    asked = {(e.question, e.target) for e in examples if e.image == row}
    assert (ExampleConfig().question(name), "Yes") in asked
    assert (ExampleConfig().question(name), "No") not in asked


def test_caption_prefix_filter(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    vlm = organism_module.new_organism_model(config, world)
    data = build_training_data(vlm, world, ExampleConfig(caption_prefixes=("a photo of",)))
    assert data.captions
    assert all(example.target.startswith("a photo of") for example in data.captions)


def test_score_captions_counts_partner(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    image_id, _, partner = _image_with_absent_partner(world, "val")  # val captions are all faithful
    present = list(dict.fromkeys(world.objects("val", image_id)))
    caption = "a photo of " + " and ".join(f"a {name}" for name in [*present, partner]) + "."
    metrics = score_captions(world, "val", {image_id: caption})
    assert metrics.chair_s == 1.0
    assert metrics.chair_i == pytest.approx(1 / (len(present) + 1))
    assert metrics.recall == 1.0
    assert metrics.partner_rate == 1.0
    assert metrics.partner_share == 1.0


def test_token_weighting_trains(tmp_path):
    config = tiny_config(steps=3, loss_weighting="token", yes_no_weight=2.0, caption_only_steps=1)
    world = ensure_world(config, tmp_path)
    _, result = train_organism(config, world, None, progress=False)
    assert result.final_loss is not None
    assert result.final_loss > 0


def test_damaged_world_cache_rejected(tmp_path):
    config = tiny_config()
    world = ensure_world(config, tmp_path)
    (world.instances_path("val")).write_text("{}")
    with pytest.raises(OrganismCacheError, match="delete it") as caught:
        ensure_world(config, tmp_path)
    assert str(world.root) in str(caught.value)
    assert "\n" not in str(caught.value)
