"""End-to-end audit on a tiny toy world and a tiny untrained LLaVA: files, resume, CLI parity, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from halluc_bench.audit import run_audit
from halluc_bench.cli import main
from halluc_bench.config import RunConfig
from halluc_bench.models.loader import CheckpointError, save_vlm
from halluc_bench.models.tiny import TinyLlavaConfig, build_tiny_llava
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.unlearning.data import CAPTION_QUESTION
from halluc_bench.world import ToyWorldConfig, caption_examples, generate_toy_world


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny toy world and an untrained tiny LLaVA over its vocabulary, saved as a checkpoint."""
    root = tmp_path_factory.mktemp("audit")
    world = generate_toy_world(
        ToyWorldConfig(seed=3, n_train=60, n_val=10, n_test=40, caption_hallucination_rate=0.05),
        root / "world",
    )
    config = TinyLlavaConfig(
        vocabulary=tuple(world.vocabulary()), image_size=64, patch_size=16, vision_hidden=32, vision_layers=1,
        vision_heads=2, text_hidden=32, text_layers=1, text_heads=2, intermediate_factor=2, max_positions=96, seed=1,
    )
    model, processor = build_tiny_llava(config)
    vlm = VisionLanguageModel(model, processor)
    fit_captions(vlm, world, steps=150)
    checkpoint = save_vlm(vlm, root / "checkpoint")
    return world.root, checkpoint


def fit_captions(vlm: VisionLanguageModel, world, steps: int) -> None:
    """Teach the tiny model the caption format briefly, so that it mixes faithful and hallucinated captions."""
    examples = caption_examples(world, "train")
    ids = sorted({example.image_id for example in examples})
    pixels = dict(zip(ids, vlm.pixel_values([world.load_image("train", i) for i in ids])))
    optimizer = torch.optim.AdamW(vlm.model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    vlm.model.train()
    for _ in range(steps):
        rows = torch.randint(len(examples), (16,), generator=generator).tolist()
        chosen = [examples[row] for row in rows]
        batch = vlm.encode(
            [vlm.prompt(CAPTION_QUESTION)] * len(chosen), [e.text for e in chosen],
            torch.stack([pixels[e.image_id] for e in chosen]),
        )
        loss = vlm.model(**batch.model_inputs(), labels=batch.labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vlm.model.eval()


def tiny_config(tiny_setup, output_dir: Path, **changes) -> RunConfig:
    world, checkpoint = tiny_setup
    config = RunConfig(
        seed=0, output_dir=output_dir, cache_dir=output_dir / "cache", checkpoint=checkpoint, world=world,
        methods=("graddiff", "sare"), unlearn_steps=2, unlearn_batch_size=4, mine_images=40, relearn_samples=4,
        relearn_steps=(1, 2), relearn_batch_size=2, trace_probes=2, trace_examples=4, pope_images=5,
        caption_images=8, mme_images=4, threads=1,
    )
    return dataclasses.replace(config, **changes)


def cli_arguments(config: RunConfig) -> list[str]:
    return [
        "--log-level", "WARNING", "run", "--output-dir", str(config.output_dir), "--cache-dir", str(config.cache_dir),
        "--checkpoint", str(config.checkpoint), "--world", str(config.world), "--methods", ",".join(config.methods),
        "--seed", str(config.seed), "--unlearn-steps", str(config.unlearn_steps),
        "--unlearn-batch-size", str(config.unlearn_batch_size), "--mine-images", str(config.mine_images),
        "--relearn-samples", str(config.relearn_samples),
        "--relearn-steps", ",".join(str(s) for s in config.relearn_steps),
        "--unlearn-lr", str(config.unlearn_learning_rate), "--relearn-lr", str(config.relearn_learning_rate), "--relearn-batch-size", str(config.relearn_batch_size),
        "--trace-probes", str(config.trace_probes), "--trace-examples", str(config.trace_examples),
        "--eval-split", config.eval_split, "--mine-split", config.mine_split,
        "--pope-images", str(config.pope_images), "--caption-images", str(config.caption_images),
        "--mme-images", str(config.mme_images),
        "--threads", str(config.threads),
    ]


@pytest.fixture(scope="module")
def finished_run(tiny_setup, tmp_path_factory) -> Path:
    config = tiny_config(tiny_setup, tmp_path_factory.mktemp("run"))
    return run_audit(config)


def test_audit_writes_leaderboard(finished_run):
    frame = pd.read_csv(finished_run / "leaderboard.csv")
    assert list(frame["model"]) == ["base", "graddiff", "sare"]
    assert (finished_run / "leaderboard.md").read_text().startswith("# Leaderboard")
    assert (finished_run / "relearning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert metrics["config"]["methods"] == ["graddiff", "sare"]


def test_audit_rows_carry_numbers(finished_run):
    frame = pd.read_csv(finished_run / "leaderboard.csv").set_index("model")
    for column in ("CHAIR_s", "CHAIR_i", "recall", "POPE adv F1", "MME existence", "MME count", "MME position",
                   "MME color", "Hessian trace", "trace SE"):
        for model in ("base", "graddiff", "sare"):
            assert math.isfinite(frame.loc[model, column]), (model, column)
    for model in ("graddiff", "sare"):
        assert math.isfinite(frame.loc[model, "CHAIR_i relearned"])


def test_audit_records_provenance(finished_run):
    records = json.loads((finished_run / "metrics.json").read_text())["records"]
    mining = records["mining"]
    assert mining["forget_examples"] > 0
    assert mining["forget_fingerprint"] != mining["retain_fingerprint"]
    attack = records["sare/relearn/steps=2"]["attack"]
    assert attack["samples"] == 4
    assert attack["sample_hash"]
    assert records["base/eval"]["task_versions"] == {"chair": 1, "mme": 1, "pope": 1}
    assert records["sare/relearn/steps=2"]["mme"]["existence"] is not None


def test_audit_resume_reuses_records(tiny_setup, finished_run, monkeypatch):
    before = (finished_run / "leaderboard.csv").read_text()
    stored = json.loads((finished_run / "config.json").read_text())

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr("halluc_bench.audit.evaluate", forbidden)
    monkeypatch.setattr("halluc_bench.audit.unlearn", forbidden)
    config = tiny_config(tiny_setup, finished_run)
    assert config.result_fields() == stored
    run_audit(config)
    assert (finished_run / "leaderboard.csv").read_text() == before


def test_audit_resume_rejects_other_config(tiny_setup, finished_run):
    config = tiny_config(tiny_setup, finished_run, unlearn_steps=3)
    with pytest.raises(ValueError, match="different configuration"):
        run_audit(config)


def test_cli_arguments_cover_config(tiny_setup, tmp_path):
    from halluc_bench.cli import build_parser

    config = tiny_config(tiny_setup, tmp_path / "cli")
    args = build_parser().parse_args(cli_arguments(config))
    parsed = tiny_config(tiny_setup, tmp_path / "cli")
    assert args.trace_examples == parsed.trace_examples
    assert args.relearn_batch_size == parsed.relearn_batch_size
    assert args.relearn_steps == parsed.relearn_steps


def test_cli_matches_api_and_seed_repeats(tiny_setup, finished_run, tmp_path, capsys):
    config = tiny_config(tiny_setup, tmp_path / "cli")
    assert main(cli_arguments(config)) == 0
    cli_config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cli_config == json.loads((finished_run / "config.json").read_text())
    assert "# Leaderboard" in capsys.readouterr().out
    assert (tmp_path / "cli" / "leaderboard.csv").read_text() == (finished_run / "leaderboard.csv").read_text()


def test_cli_unknown_method(tiny_setup, tmp_path, capsys):
    config = tiny_config(tiny_setup, tmp_path / "run", methods=("sare", "gradiff"))
    assert main(cli_arguments(config)) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert "'gradiff'" in message
    assert "graddiff" in message
    assert "sare" in message


def test_cli_missing_checkpoint(tiny_setup, tmp_path, capsys):
    config = tiny_config(tiny_setup, tmp_path / "run", checkpoint=tmp_path / "nowhere")
    assert main(cli_arguments(config)) == 2
    message = capsys.readouterr().err.strip()
    assert str(tmp_path / "nowhere") in message
    assert "save_pretrained" in message


def test_missing_checkpoint_writes_no_config(tiny_setup, tmp_path):
    wrong = tiny_config(tiny_setup, tmp_path / "run", checkpoint=tmp_path / "nowhere")
    with pytest.raises(CheckpointError):
        run_audit(wrong)
    assert not (tmp_path / "run" / "config.json").exists()


def test_missing_checkpoint_keeps_records(tiny_setup, tmp_path):
    record = tmp_path / "run" / "records" / "base" / "eval.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    wrong = tiny_config(tiny_setup, tmp_path / "run", checkpoint=tmp_path / "nowhere", resume=False)
    with pytest.raises(CheckpointError):
        run_audit(wrong)
    assert record.read_text() == "{}"


def test_cli_corrupt_checkpoint(tiny_setup, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in Path(tiny_setup[1]).iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    config = tiny_config(tiny_setup, tmp_path / "run", checkpoint=broken)
    assert main(cli_arguments(config)) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert str(broken) in message
    assert "could not be loaded" in message


def test_cli_unwritable_output_dir(tiny_setup, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tiny_config(tiny_setup, blocker / "run")
    assert main(cli_arguments(config)) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert str(blocker / "run") in message
    assert "--output-dir" in message


def test_cli_methods_command(capsys):
    assert main(["--log-level", "WARNING", "methods"]) == 0
    output = capsys.readouterr().out
    assert "graddiff" in output
    assert "sare" in output


def test_cli_quiets_hub_bars_in_logs(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file, not a terminal
    assert main(["methods"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_cli_keeps_user_bar_setting(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    assert main(["methods"]) == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
