"""Shared fixtures: the real-output data directory and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# The only setting that locates the real model outputs used by the parity tests.
REALDATA_ENV = "HALLUC_BENCH_REALDATA"


def realdata_dir() -> Path:
    """Return the real-output directory: $HALLUC_BENCH_REALDATA, else ../shared/realdata beside the repo."""
    configured = os.environ.get(REALDATA_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "realdata").resolve()


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real-output directory; tests that use it are skipped when it is absent."""
    path = realdata_dir()
    if not path.is_dir():
        pytest.skip(f"real-output data not found at {path}; set {REALDATA_ENV} to its directory")
    return path


@pytest.fixture(scope="session")
def realfile(realdata):
    """Return a function that resolves a path inside the real-output directory, skipping when it is missing."""

    def resolve(relative: str) -> Path:
        path = realdata / relative
        if not path.exists():
            pytest.skip(f"real-output file {relative} not found under {realdata}")
        return path

    return resolve


TINY_WORDS = tuple(
    "a an the red blue green fork knife cup bowl dog frisbee on left right top bottom and of is there in image "
    "describe yes no Yes No".split()
)


@pytest.fixture
def tiny_vlm():
    """A freshly initialised, very small LLaVA (about 30k parameters) wrapped for the audit."""
    from halluc_bench.models.tiny import TinyLlavaConfig, build_tiny_llava
    from halluc_bench.models.vlm import VisionLanguageModel

    config = TinyLlavaConfig(
        vocabulary=TINY_WORDS,
        image_size=16,
        patch_size=8,
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        text_hidden=32,
        text_layers=1,
        text_heads=2,
        intermediate_factor=2,
        max_positions=64,
        seed=0,
    )
    model, processor = build_tiny_llava(config)
    return VisionLanguageModel(model, processor, name="tiny")


@pytest.fixture
def tiny_images():
    """Four solid-colour RGB images of 16x16 pixels."""
    from PIL import Image

    colours = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (240, 240, 240)]
    return [Image.new("RGB", (16, 16), colour) for colour in colours]


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Run tests on one torch thread: tiny models run faster that way, and timings do not depend on the core count."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
