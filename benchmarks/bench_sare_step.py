"""Benchmark the cost of one SARE step against one GradDiff step, in time and peak memory.

Step time is the mean wall time of the optimizer step alone (forward, backward, update), as
recorded by the training loop, over whole refresh cycles after a warm-up of one forget epoch.
All configurations are timed in one process, round-robin in short runs, so that changes in
machine load hit all of them alike. The whole measurement is repeated (``--repeats``). Peak
memory comes from one subprocess per configuration, because a process's peak never goes
down: the rise of the maximum resident set size over the size before training (CPU), or the
peak of allocated CUDA memory (GPU).

Usage: ``python benchmarks/bench_sare_step.py [--checkpoint DIR] [--repeats 2] [--threads 1]``.
Without a checkpoint the model is a randomly initialised ``build_tiny_llava`` with default
sizes (about 2M parameters, 64x64 images, 64 image tokens). Each step sees 8 forget and 8
retain captions of 14 to 17 tokens. Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger("bench_sare_step")

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple")
OBJECTS = ("fork", "knife", "spoon", "cup", "bowl", "plate", "dog", "cat", "frisbee", "ball", "chair", "table",
           "car", "bus", "bike", "tree", "kite", "boat", "bird", "horse", "clock", "vase", "book", "phone")
PLACES = ("left", "right", "top", "bottom", "middle", "corner")
FILLERS = ("a", "the", "on", "of", "and", "with", "near", "next", "to", "small", "large", ".")
VOCABULARY = (*COLOURS, *OBJECTS, *PLACES, *FILLERS)

# name -> (method, overrides). GA-based SARE isolates the cost of the targeted-SAM step, because
# GradDiff is exactly its objective without the perturbation. The default SARE adds NPO's
# reference model, whose summed log-probabilities are cached per forget example.
CONFIGS = {
    "graddiff": ("graddiff", {}),
    "sare_ga_exact": ("sare", {"forget_objective": "ga", "refresh_every": 1}),
    "sare_ga_refresh4": ("sare", {"forget_objective": "ga", "refresh_every": 4}),
    "npo": ("npo", {}),
    "sare_npo_exact": ("sare", {"refresh_every": 1}),
    "sare_npo_refresh4": ("sare", {"refresh_every": 4}),
}


def build_model(checkpoint: str | None):
    from halluc_bench.models.loader import load_vlm
    from halluc_bench.models.tiny import TinyLlavaConfig, build_tiny_llava
    from halluc_bench.models.vlm import VisionLanguageModel

    if checkpoint:
        return load_vlm(checkpoint)
    model, processor = build_tiny_llava(TinyLlavaConfig(vocabulary=VOCABULARY))
    return VisionLanguageModel(model, processor, name="tiny-default")


def synthetic_data(vlm, n_examples: int, seed: int):
    """Caption each solid-colour image twice: a faithful caption (retain) and one with a hallucinated object (forget)."""
    from PIL import Image

    from halluc_bench.unlearning.data import SpanExample, UnlearningData

    generator = torch.Generator().manual_seed(seed)
    size = vlm.processor.image_processor.crop_size["height"]
    images, forget, retain = [], [], []
    for image_id in range(n_examples):
        pick = torch.randint(0, 10_000, (7,), generator=generator).tolist()
        colour, other = COLOURS[pick[0] % 8], COLOURS[pick[1] % 8]
        thing, second, ghost = (OBJECTS[pick[i] % len(OBJECTS)] for i in (2, 3, 4))
        place, other_place = PLACES[pick[5] % 6], PLACES[pick[6] % 6]
        images.append(Image.new("RGB", (size, size), (pick[0] % 256, pick[1] % 256, pick[2] % 256)))
        faithful = f"a {colour} {thing} on the {place} and a {other} {second} on the {other_place} ."
        hallucinated = f"a {colour} {thing} on the {place} with a {ghost} and a {other} {second} on the {other_place} ."
        start = hallucinated.index(f" {ghost} ") + 1
        forget.append(SpanExample(image_id, hallucinated, ((start, start + len(ghost)),)))
        retain.append(SpanExample(image_id, faithful))
    pixels = vlm.pixel_values(images)
    return UnlearningData(forget, retain, {image_id: pixels[image_id] for image_id in range(n_examples)})


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _prepare(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    vlm = build_model(args.checkpoint)
    vlm.model.to(args.device)
    data = synthetic_data(vlm, args.examples, seed=0)
    warmup = -(-args.examples // args.batch_size)  # one forget epoch, so the reference cache is warm
    warmup += -warmup % 4  # whole refresh cycles
    return vlm, data, warmup


def _unlearner(name: str, args: argparse.Namespace, steps: int):
    from halluc_bench.unlearning import make_unlearner

    method, overrides = CONFIGS[name]
    return make_unlearner(method, steps=steps, batch_size=args.batch_size, learning_rate=1e-5, **overrides)


def measure_memory(args: argparse.Namespace) -> dict:
    """Run one configuration once in this (fresh) process and return its peak training memory."""
    vlm, data, warmup = _prepare(args)
    unlearner = _unlearner(args.worker, args, warmup + 4)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    rss_before = current_rss_bytes()
    unlearner.unlearn(vlm, data, progress=False)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base_memory
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before  # ru_maxrss is in KiB on Linux
    return {"config": args.worker, "peak_memory_bytes": peak}


def measure_times(args: argparse.Namespace) -> list[dict]:
    """Time every configuration in this process, round-robin, so that load changes hit all of them alike.

    Each round runs every configuration for one warm-up epoch plus ``args.steps`` timed steps.
    Returns one row per repeat and configuration, summarising the timed steps of all rounds.
    """
    vlm, data, warmup = _prepare(args)
    timed = max(4, args.steps - args.steps % 4)
    rows = []
    for repeat in range(args.repeats):
        seconds: dict[str, list[float]] = {name: [] for name in args.configs}
        for _ in range(args.rounds):
            for name in args.configs:
                result = _unlearner(name, args, warmup + timed).unlearn(vlm, data, progress=False)
                seconds[name].extend(row.seconds for row in result.log[warmup:])
        for name in args.configs:
            rows.append({
                "config": name,
                "repeat": repeat,
                "mean_step_s": statistics.fmean(seconds[name]),
                "median_step_s": statistics.median(seconds[name]),
                "timed_steps": len(seconds[name]),
            })
            logger.info("repeat %d %-18s %.1f ms/step", repeat, name, 1000 * rows[-1]["mean_step_s"])
    return rows


def measure_all_memory(args: argparse.Namespace) -> dict[str, int]:
    """Run each configuration in its own subprocess, since a process's peak memory never goes down."""
    peaks = {}
    for name in args.configs:
        command = [sys.executable, __file__, "--worker", name, "--threads", str(args.threads),
                   "--batch-size", str(args.batch_size), "--examples", str(args.examples), "--device", args.device]
        if args.checkpoint:
            command += ["--checkpoint", args.checkpoint]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise RuntimeError(f"memory worker {name} failed:\n{finished.stderr[-3000:]}")
        peaks[name] = json.loads(finished.stdout.strip().splitlines()[-1])["peak_memory_bytes"]
    return peaks


def summarise(rows: list[dict], peaks: dict[str, int], configs: list[str]) -> str:
    """Render one line per configuration and repeat, with ratios to GradDiff of the same repeat."""
    header = f"{'config':<18} {'repeat':>6} {'ms/step':>9} {'median':>8} {'x graddiff':>11} {'peak MiB':>9} {'x graddiff':>11}"
    lines = [header]
    for repeat in sorted({row["repeat"] for row in rows}):
        base = next(row for row in rows if row["repeat"] == repeat and row["config"] == "graddiff")
        for name in configs:
            row = next(item for item in rows if item["repeat"] == repeat and item["config"] == name)
            lines.append(
                f"{name:<18} {repeat:>6} {1000 * row['mean_step_s']:>9.1f} {1000 * row['median_step_s']:>8.1f} "
                f"{row['mean_step_s'] / base['mean_step_s']:>11.2f} {peaks[name] / 2**20:>9.1f} "
                f"{peaks[name] / max(peaks['graddiff'], 1):>11.2f}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="organism checkpoint directory (default: a fresh ~2M-parameter tiny LLaVA)")
    parser.add_argument("--repeats", type=int, default=2, help="times the whole set of configurations runs (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin passes over the configurations per repeat (default 3)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round, a multiple of 4 (default 8)")
    parser.add_argument("--batch-size", type=int, default=8, help="forget and retain examples per step (default 8)")
    parser.add_argument("--examples", type=int, default=32, help="forget examples, and as many retain ones (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per worker (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations to run")
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "graddiff" not in args.configs:
        parser.error("--configs must include graddiff, the baseline of every ratio")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure_memory(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for library in ("halluc_bench", "sare"):  # per-run start/stop lines would bury the measurements
        logging.getLogger(library).setLevel(logging.WARNING)
    peaks = measure_all_memory(args)
    rows = measure_times(args)
    print(summarise(rows, peaks, args.configs))
    if args.json:
        handle, temporary = tempfile.mkstemp(dir=args.json.parent, suffix=".json")
        with os.fdopen(handle, "w") as stream:
            json.dump({"times": rows, "peak_memory_bytes": peaks}, stream, indent=2)
        os.replace(temporary, args.json)


if __name__ == "__main__":
    main()
