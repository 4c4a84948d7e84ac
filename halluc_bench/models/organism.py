"""The organism: halluc-bench's built-in model, a tiny LLaVA trained from scratch on the toy world.

The organism learns to caption toy-world scenes and to answer "Is there a {object} in the
image?" on CPU in minutes. Some training captions name an absent co-occurrence partner (a
"knife" beside a fork with no knife), and scenes with one member of a pair usually hold the
other. So, like real multimodal LLMs, it names absent partners in its captions and answers
"Yes" more often for an absent partner than for other absent objects.

Cache layout under ``cache_dir``::

    worlds/<world hash>/            the toy world (COCO files, images, world.json)
    organisms/<organism hash>/
        training/checkpoint.pt      resumable training state, removed once the build finishes
        model/                      save_pretrained output plus organism.json (written last)

A ``model/`` folder with a valid ``organism.json`` whose config equals the requested one is
a finished organism and is returned without training. Any other content of ``model/`` is
reported as a corrupt cache, naming the folder to delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers

from halluc_bench.config import default_cache_dir
from halluc_bench.models.loader import CheckpointError, check_checkpoint_dir, load_vlm, save_vlm
from halluc_bench.models.organism_data import ExampleConfig, build_training_data, organism_vocabulary
from halluc_bench.models.organism_eval import evaluate_captions, evaluate_pope, pope_images_available
from halluc_bench.models.tiny import TinyLlavaConfig, build_tiny_llava
from halluc_bench.models.training import TrainingConfig, TrainingResult, train
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.world.coco import World
from halluc_bench.world.generate import generate_toy_world
from halluc_bench.world.toy import DEFAULT_CATEGORIES, ToyWorldConfig

logger = logging.getLogger(__name__)

ORGANISM_FORMAT = 1  # bump when training or the cache layout changes what a config produces
MANIFEST_NAME = "organism.json"
EVAL_SPLIT = "val"


def _default_world() -> ToyWorldConfig:
    """Return the organism's default toy world.

    Glyphs that fill their grid cell without jitter line up with 2x2 patches of 16 pixels,
    so the vision tower learns to detect objects within about 100 steps (jittered 16-pixel
    glyphs took more than 1,000). Zipf-like category frequencies (weight 1 / rank^0.7, rank
    in the order of ``DEFAULT_CATEGORIES``) give each object its own prior share of "Yes"
    answers. That prior lets yes/no answering start to use the image reliably, and it makes
    POPE's popular negatives differ from random ones, as in COCO. 15% of the training
    captions name an absent co-occurrence partner.
    """
    weights = tuple(round(1.0 / (rank + 1) ** 0.7, 4) for rank in range(len(DEFAULT_CATEGORIES)))
    return ToyWorldConfig(glyph_size=32, position_jitter=0, caption_hallucination_rate=0.15, category_weights=weights)


def _default_model() -> TinyLlavaConfig:
    # Patches of 16 pixels give 16 image tokens per 64-pixel scene, half the cost of patches of 8.
    return TinyLlavaConfig(patch_size=16)


def _default_examples() -> ExampleConfig:
    # "a photo of a fork, a knife and a cup." names objects only: short sequences, and a caption
    # of four objects fits the 24 new tokens that CHAIR generates.
    return ExampleConfig(caption_prefixes=("a photo of",))


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that decides the organism's weights; ``config_hash`` names its cache folder.

    ``model.vocabulary`` stays empty: the vocabulary follows from the world and the prompts.
    ``threads`` is part of the config because the CPU kernels' reduction order, and so the
    exact weights, depend on the thread count.
    """

    world: ToyWorldConfig = field(default_factory=_default_world)
    model: TinyLlavaConfig = field(default_factory=_default_model)
    examples: ExampleConfig = field(default_factory=_default_examples)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_images: int = 100  # validation images of the quick check after training; 0 skips it
    threads: int = 2  # torch CPU threads while building

    def __post_init__(self) -> None:
        expected = {"world": ToyWorldConfig, "model": TinyLlavaConfig, "examples": ExampleConfig, "training": TrainingConfig}
        for name, kind in expected.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"OrganismConfig.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.model.vocabulary:
            raise ValueError("OrganismConfig.model.vocabulary must be empty; the organism takes its words from the world")
        if self.model.image_size != self.world.image_size:
            raise ValueError(
                f"OrganismConfig.model.image_size {self.model.image_size} differs from the world's image_size "
                f"{self.world.image_size}; set both to the same number of pixels"
            )
        for name, minimum in (("eval_images", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"OrganismConfig.{name} must be an integer >= {minimum}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready data (tuples become lists), as stored in the manifest."""
        model = self.model.to_dict()
        model.pop("vocabulary")
        data = {
            "format": ORGANISM_FORMAT,
            "world": self.world.to_json(),
            "model": model,
            "examples": self.examples.to_dict(),
            "training": self.training.to_dict(),
            "eval_images": self.eval_images,
            "threads": self.threads,
        }
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OrganismConfig":
        """Rebuild a config from :meth:`to_dict` output; unknown or missing fields raise ValueError."""
        if data.get("format") != ORGANISM_FORMAT:
            raise ValueError(f"organism config format {data.get('format')!r} is not {ORGANISM_FORMAT}")
        try:
            return cls(
                world=ToyWorldConfig.from_json(data["world"]),
                model=TinyLlavaConfig(**data["model"]),
                examples=ExampleConfig(**data["examples"]),
                training=TrainingConfig(**data["training"]),
                eval_images=data["eval_images"],
                threads=data["threads"],
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"organism config is incomplete or has unknown fields ({error})") from error

    def config_hash(self) -> str:
        """Return 16 hex digits of the SHA-256 of the canonical JSON of :meth:`to_dict`."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def world_hash(self) -> str:
        """Return 16 hex digits of the SHA-256 of the world config alone (worlds are shared between organisms)."""
        payload = json.dumps(self.world.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def default_organism_config(seed: int = 0) -> OrganismConfig:
    """Return the default organism config with ``seed`` applied to the world, the weights, the examples and the data order."""
    base = OrganismConfig()
    return dataclasses.replace(
        base,
        world=dataclasses.replace(base.world, seed=seed),
        model=dataclasses.replace(base.model, seed=seed),
        examples=dataclasses.replace(base.examples, seed=seed),
        training=dataclasses.replace(base.training, seed=seed),
    )


class OrganismCacheError(ValueError):
    """An organism cache folder that is incomplete, corrupt or built from another config."""


@dataclass(frozen=True)
class OrganismPaths:
    """Cache locations of one organism and its world."""

    root: Path  # organisms/<organism hash>
    world_dir: Path  # worlds/<world hash>

    @property
    def checkpoint_dir(self) -> Path:
        """The save_pretrained folder; pass it to ``load_vlm``."""
        return self.root / "model"

    @property
    def manifest_path(self) -> Path:
        return self.checkpoint_dir / MANIFEST_NAME

    @property
    def training_checkpoint(self) -> Path:
        return self.root / "training" / "checkpoint.pt"


def organism_paths(config: OrganismConfig, cache_dir: str | os.PathLike) -> OrganismPaths:
    """Return the cache locations of ``config``'s organism and world (nothing is created)."""
    cache = Path(cache_dir).expanduser()
    return OrganismPaths(root=cache / "organisms" / config.config_hash(), world_dir=cache / "worlds" / config.world_hash())


def ensure_world(config: OrganismConfig, cache_dir: str | os.PathLike) -> World:
    """Generate the organism's toy world under the cache, or reuse it when it is already there.

    Raises OrganismCacheError naming the folder to delete when the world folder is partial,
    modified or belongs to another world config.
    """
    world_dir = organism_paths(config, cache_dir).world_dir
    try:
        return generate_toy_world(config.world, world_dir)
    except FileExistsError as error:
        reason = str(error).split(" because ", 1)[-1].split(";", 1)[0]
        raise OrganismCacheError(f"toy-world cache {world_dir} cannot be reused ({reason}); delete it to regenerate the world") from error


def read_manifest(paths: OrganismPaths, config: OrganismConfig) -> dict[str, Any]:
    """Return the manifest of a finished organism, or raise OrganismCacheError naming the folder to delete."""
    folder = paths.checkpoint_dir
    fix = f"delete {paths.root} to rebuild the organism"
    if not paths.manifest_path.is_file():
        raise OrganismCacheError(f"organism cache {folder} is incomplete (no {MANIFEST_NAME}); {fix}")
    try:
        manifest = json.loads(paths.manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OrganismCacheError(f"organism manifest {paths.manifest_path} is unreadable ({error}); {fix}") from None
    if not isinstance(manifest, dict):
        raise OrganismCacheError(f"organism manifest {paths.manifest_path} is not a JSON object; {fix}")
    expected = config.to_dict()
    stored = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    if manifest.get("config_hash") != config.config_hash() or stored != expected:
        differing = sorted(key for key in set(stored) | set(expected) if stored.get(key) != expected.get(key)) or ["config_hash"]
        raise OrganismCacheError(
            f"organism cache {folder} contains an organism of another config ({', '.join(differing)} differ); {fix}"
        )
    try:
        check_checkpoint_dir(folder)
    except CheckpointError as error:
        raise OrganismCacheError(f"organism cache {folder} is corrupt ({error}); {fix}") from None
    return manifest


def ensure_organism(config: OrganismConfig, cache_dir: str | os.PathLike, progress: bool = True) -> OrganismPaths:
    """Return the cached organism of ``config``, training it first when the cache has none.

    An interrupted build resumes from its last training checkpoint. Raises
    OrganismCacheError when the cache folder is corrupt or belongs to another config.
    """
    paths = organism_paths(config, cache_dir)
    if paths.checkpoint_dir.exists():
        read_manifest(paths, config)
        logger.info("reusing the organism in %s", paths.checkpoint_dir)
        return paths
    started = time.perf_counter()
    with _torch_threads(config.threads):
        world = ensure_world(config, cache_dir)
        vlm, result = train_organism(config, world, paths.training_checkpoint, progress)
        metrics = quick_evaluation(vlm, world, config) if config.eval_images else {}
    manifest = _manifest(config, result, metrics, time.perf_counter() - started)
    save_vlm(vlm, paths.checkpoint_dir)
    _write_json_atomic(paths.manifest_path, manifest)
    paths.training_checkpoint.unlink(missing_ok=True)
    logger.info("built the organism in %s in %.0f s", paths.checkpoint_dir, manifest["build_seconds"])
    return paths


def build_organism(config: OrganismConfig, cache_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Return the organism's checkpoint folder (for ``load_vlm``), building it when the cache has none."""
    return ensure_organism(config, cache_dir, progress).checkpoint_dir


def load_organism(
    config: OrganismConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **load_options: Any,
) -> VisionLanguageModel:
    """Build or reuse the organism and load it through the generic checkpoint loader.

    ``load_options`` go to :func:`halluc_bench.models.loader.load_vlm` (``dtype``,
    ``attn_implementation``, ``name``). The cache defaults to $HALLUC_BENCH_CACHE or
    ``~/.cache/halluc-bench``.
    """
    if cache_dir is None:
        cache_dir = default_cache_dir()
    path = build_organism(config or default_organism_config(), cache_dir, progress)
    load_options.setdefault("name", "organism")
    return load_vlm(path, **load_options)


def new_organism_model(config: OrganismConfig, world: World) -> VisionLanguageModel:
    """Return the randomly initialised organism for ``world`` (seeded by ``config.model.seed``)."""
    model_config = dataclasses.replace(config.model, vocabulary=organism_vocabulary(world, config.examples))
    model, processor = build_tiny_llava(model_config)
    return VisionLanguageModel(model, processor, name="organism")


def train_organism(
    config: OrganismConfig, world: World, checkpoint: Path | None, progress: bool = True
) -> tuple[VisionLanguageModel, TrainingResult]:
    """Initialise the organism and train it on the world's train split; resume from ``checkpoint`` when present."""
    vlm = new_organism_model(config, world)
    data = build_training_data(vlm, world, config.examples, split="train", progress=progress)
    result = train(vlm, data, config.training, checkpoint_path=checkpoint, progress=progress)
    return vlm, result


def quick_evaluation(vlm: VisionLanguageModel, world: World, config: OrganismConfig) -> dict[str, Any]:
    """Caption and POPE metrics on the first ``config.eval_images`` validation images."""
    caption_metrics, _ = evaluate_captions(vlm, world, EVAL_SPLIT, config.eval_images)
    pope_images = min(config.eval_images, pope_images_available(world, EVAL_SPLIT))
    pope = evaluate_pope(vlm, world, EVAL_SPLIT, pope_images, seed=config.training.seed) if pope_images else {}
    metrics = {"split": EVAL_SPLIT, "captions": dataclasses.asdict(caption_metrics), "pope_images": pope_images,
               "pope": {strategy: values for strategy, values in pope.items()}}
    logger.info(
        "organism on %s: recall %.3f, CHAIR_i %.3f, POPE F1 %s", EVAL_SPLIT, caption_metrics.recall,
        caption_metrics.chair_i, ", ".join(f"{name} {values['f1']:.3f}" for name, values in pope.items()),
    )
    return metrics


def _manifest(config: OrganismConfig, result: TrainingResult, metrics: dict, build_seconds: float) -> dict[str, Any]:
    return {
        "config_hash": config.config_hash(),
        "config": config.to_dict(),
        "training": {
            "steps": result.steps,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 1),
            "seconds_per_step": round(result.seconds_per_step, 4),
            "loss_history": [[step, round(loss, 5)] for step, loss in result.loss_history],
        },
        "build_seconds": round(build_seconds, 1),
        "metrics": metrics,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
    }


def _write_json_atomic(path: Path, data: Any) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
