"""Build the organism from scratch and score it on the test split with the audit's own metrics.

Reports the build and training time (wall clock and process CPU seconds) and the seconds
per training step. On the held-out test split it reports caption recall, CHAIR_s, CHAIR_i,
the share of captions that name an absent co-occurrence partner, and POPE F1 for random,
popular and adversarial negatives. The evaluation uses the same task definitions, question builder and
scorers as ``halluc-bench run``.

Usage::

    python benchmarks/bench_organism.py [--cache DIR] [--seed 0] [--set training.steps=600 ...]

``--set`` overrides one field of the default config (sections: world, model, examples,
training; or a top-level field such as threads). Without ``--cache`` the organism is built
in a temporary folder, so the build is always timed from scratch. Timings depend on the
machine and its load: on a shared machine compare the CPU seconds, not only wall clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from halluc_bench.evaluation import build_evaluation_set, evaluate
from halluc_bench.models.loader import load_vlm
from halluc_bench.models.organism import OrganismConfig, default_organism_config, ensure_organism
from halluc_bench.models.organism_eval import score_captions
from halluc_bench.tasks.definitions import load_task_definition
from halluc_bench.world.coco import World

logger = logging.getLogger("bench_organism")


def apply_override(config: OrganismConfig, assignment: str) -> OrganismConfig:
    """Return ``config`` with one ``section.field=value`` (or ``field=value``) override; the value is JSON."""
    key, separator, raw = assignment.partition("=")
    if not separator:
        raise ValueError(f"override {assignment!r} must read section.field=value, e.g. training.steps=600")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare word such as cosine
    if isinstance(value, list):
        value = tuple(tuple(item) if isinstance(item, list) else item for item in value)
    section, _, name = key.rpartition(".")
    if not section:
        return dataclasses.replace(config, **{name: value})
    if section not in ("world", "model", "examples", "training"):
        raise ValueError(f"unknown config section {section!r} in {assignment!r}; valid: world, model, examples, training")
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: value})})


def score_on_test(checkpoint: Path, world: World, seed: int) -> dict:
    """Score the organism on the test split with the audit's evaluation set and metrics."""
    vlm = load_vlm(checkpoint)
    evaluation_set = build_evaluation_set(world, "test", vlm, load_task_definition("pope"), load_task_definition("chair"), seed)
    result = evaluate(vlm, evaluation_set)
    captions = {item["image_id"]: item["caption"] for item in result["chair"]["captions"]}
    partners = score_captions(world, "test", captions)
    return {
        "recall": result["chair"]["recall"],
        "chair_s": result["chair"]["chair_s"],
        "chair_i": result["chair"]["chair_i"],
        "partner_rate": partners.partner_rate,
        "partner_share_of_hallucinations": partners.partner_share,
        "pope": {strategy: {key: metrics[key] for key in ("f1", "accuracy", "precision", "recall", "yes_ratio", "fp", "fn")}
                 for strategy, metrics in result["pope"].items()},
        "example_captions": [item["caption"] for item in result["chair"]["captions"][:5]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="cache folder (default: a fresh temporary folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default organism config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one config field, value as JSON; repeatable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    config = default_organism_config(seed=args.seed)
    for assignment in args.set:
        config = apply_override(config, assignment)
    with tempfile.TemporaryDirectory(prefix="bench-organism-") as temporary:
        cache = args.cache or Path(temporary)
        started, started_cpu = time.perf_counter(), time.process_time()
        paths = ensure_organism(config, cache)
        build = {"wall_seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(time.process_time() - started_cpu, 1)}
        manifest = json.loads(paths.manifest_path.read_text(encoding="utf-8"))
        torch.set_num_threads(config.threads)
        scores = score_on_test(paths.checkpoint_dir, World.from_dir(paths.world_dir), args.seed)
    report = {"config_hash": config.config_hash(), "build": build, "training": manifest["training"],
              "validation": manifest["metrics"], "test": scores}
    report["training"].pop("loss_history", None)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
