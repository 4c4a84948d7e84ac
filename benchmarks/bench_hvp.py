"""Benchmark the Hessian-vector product and the Hutch++ saving on a ~2M-parameter LLaVA.

Measures, at batch 32 with eager attention:

1. time of one Hessian-vector product / time of one gradient, for a product computed from
   scratch (forward, backward with create_graph, second backward) and for a product that
   reuses the kept first-order graph (second backward only, as the trace and eigenvalue
   probes do after their first product);
2. the number of Hutch++ products needed to reach the standard error that Hutchinson reaches
   with 100 probes, for several sketch sizes.

Usage: ``python benchmarks/bench_hvp.py [--checkpoint DIR] [--train-steps 150] [--threads 1]``.
Without a checkpoint the model is a randomly initialised ``build_tiny_llava`` with default
sizes and a 59-word vocabulary; ``--train-steps`` first fits it to the captions, because
Hutch++ only gains where a few eigenvalues dominate the Hessian, as in trained networks. The data are synthetic scenes (one coloured square) with
template captions that name two objects, the second being the hallucinated one. Timings
depend on the machine and its load, so repeat them.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Callable

import torch
from PIL import Image, ImageDraw

from halluc_bench.attacks.relearn import relearn
from halluc_bench.models.loader import load_vlm
from halluc_bench.models.tiny import TinyLlavaConfig, build_tiny_llava
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.probes import forget_loss_fn, hessian_operator, hutchinson_trace, hutchpp_trace, probe_mode
from halluc_bench.unlearning.data import SpanExample, UnlearningData

logger = logging.getLogger("bench_hvp")

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60), "yellow": (230, 210, 40),
           "white": (245, 245, 245), "black": (20, 20, 20), "orange": (240, 140, 30), "purple": (140, 50, 170)}
OBJECTS = ("fork", "knife", "spoon", "cup", "bowl", "plate", "dog", "cat", "frisbee", "ball", "chair", "table",
           "car", "bus", "bike", "tree", "kite", "boat", "bird", "horse", "clock", "vase", "book", "phone")
PLACES = ("left", "right", "top", "bottom", "middle", "corner")
OTHER = ("a", "an", "the", "on", "in", "of", "and", "with", "there", "is", "next", "to", "near", "image",
         "describe", "yes", "no", "Yes", "No", "small", "large")
VOCABULARY = (*COLOURS, *OBJECTS, *PLACES, *OTHER)  # 59 words


def synthetic_data(vlm: VisionLanguageModel, n_examples: int, image_size: int, seed: int) -> UnlearningData:
    """Build scenes of one coloured square, captioned with two objects; the second is hallucinated."""
    generator = torch.Generator().manual_seed(seed)
    colours, images, examples = list(COLOURS), [], []
    for index in range(n_examples):
        picks = torch.randint(0, 1000, (6,), generator=generator).tolist()
        colour, other_colour = colours[picks[0] % len(colours)], colours[picks[1] % len(colours)]
        thing, other_thing = OBJECTS[picks[2] % len(OBJECTS)], OBJECTS[picks[3] % len(OBJECTS)]
        place, other_place = PLACES[picks[4] % len(PLACES)], PLACES[picks[5] % len(PLACES)]
        image = Image.new("RGB", (image_size, image_size), (128, 128, 128))
        corner = picks[4] % (image_size // 2)
        ImageDraw.Draw(image).rectangle([corner, corner, corner + image_size // 3, corner + image_size // 3],
                                        fill=COLOURS[colour])
        images.append(image)
        caption = f"a {colour} {thing} on the {place} and a {other_colour} {other_thing} on the {other_place} ."
        start = caption.rindex(other_thing)
        examples.append(SpanExample(index, caption, forget_spans=((start, start + len(other_thing)),)))
    pixels = vlm.pixel_values(images)
    return UnlearningData(examples, [], {index: pixels[index] for index in range(n_examples)})


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def time_ratios(vlm: VisionLanguageModel, loss_fn, samples: int) -> dict[str, float]:
    """Time a gradient, a fresh HVP and a graph-reusing HVP in interleaved rounds.

    Each round times the three once, back to back, so load changes on a shared machine hit
    all three alike. Returns the median seconds of each and the median of the per-round ratios.
    """
    model = vlm.model
    with probe_mode(model):
        params = [parameter for parameter in model.parameters() if parameter.requires_grad]

        def gradient() -> None:
            torch.autograd.grad(loss_fn(model), params, allow_unused=True)

        with hessian_operator(model, loss_fn, reuse_graph=False) as fresh, \
                hessian_operator(model, loss_fn, reuse_graph=True) as reused:
            vector = torch.randn(fresh.dimension, generator=torch.Generator().manual_seed(0))
            for function in (gradient, lambda: fresh.matvec(vector), lambda: reused.matvec(vector)):
                function()  # warm-up
            rounds = [
                (seconds(gradient), seconds(lambda: fresh.matvec(vector)), seconds(lambda: reused.matvec(vector)))
                for _ in range(samples)
            ]
    return {
        "gradient_s": statistics.median(r[0] for r in rounds),
        "fresh_hvp_s": statistics.median(r[1] for r in rounds),
        "reused_hvp_s": statistics.median(r[2] for r in rounds),
        "fresh_ratio": statistics.median(r[1] / r[0] for r in rounds),
        "reused_ratio": statistics.median(r[2] / r[0] for r in rounds),
    }


def hutchpp_budget(vlm, loss_fn, probes: int, sketch_sizes: list[int], max_residual: int, seed: int) -> dict:
    """Return Hutchinson's stderr at ``probes`` probes and the Hutch++ products needed to match it."""
    reference = hutchinson_trace(vlm.model, loss_fn, generator=torch.Generator().manual_seed(seed),
                                 max_probes=probes, tolerance=0.0)
    results = {"hutchinson_trace": reference.trace, "hutchinson_stderr": reference.stderr, "hutchpp": {}}
    for sketch in sketch_sizes:
        estimate = hutchpp_trace(vlm.model, loss_fn, generator=torch.Generator().manual_seed(seed + sketch),
                                 sketch_size=sketch, max_probes=max_residual, tolerance=0.0,
                                 target_stderr=reference.stderr)
        results["hutchpp"][sketch] = {"n_hvp": estimate.n_hvp, "reached": estimate.stop_reason == "target_stderr",
                                      "trace": estimate.trace, "stderr": estimate.stderr,
                                      "low_rank_trace": estimate.low_rank_trace}
    return results


def fit_captions(vlm: VisionLanguageModel, data: UnlearningData, steps: int, seed: int) -> VisionLanguageModel:
    """Fit the model to the synthetic captions for ``steps`` AdamW steps (learning rate 3e-3)."""
    fitted = relearn(vlm, data, data.forget, steps=[steps], learning_rate=3e-3, batch_size=len(data.forget), seed=seed)
    losses = fitted.info.losses
    print(f"fitted {steps} steps: caption NLL {losses[0]:.3f} -> {losses[-1]:.3f}")
    return fitted[steps]


def build_model(checkpoint: str | None, seed: int) -> VisionLanguageModel:
    if checkpoint:
        return load_vlm(checkpoint)
    model, processor = build_tiny_llava(TinyLlavaConfig(vocabulary=VOCABULARY, seed=seed))
    return VisionLanguageModel(model, processor, name="tiny-llava-2m")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="local save_pretrained directory of the model (default: build one)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples in the loss batch")
    parser.add_argument("--repeats", type=int, default=3, help="how many times to repeat the timing")
    parser.add_argument("--timing-samples", type=int, default=5, help="interleaved timing rounds per repeat (medians taken)")
    parser.add_argument("--probes", type=int, default=100, help="Hutchinson probes that set the target stderr")
    parser.add_argument("--sketch-sizes", type=int, nargs="+", default=[5, 10, 20], help="Hutch++ sketch sizes")
    parser.add_argument("--max-residual", type=int, default=150, help="cap on Hutch++ residual probes")
    parser.add_argument("--skip-trace", action="store_true", help="time the products only")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="fit the model to the synthetic captions first, so the Hessian is a trained one's")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    vlm = build_model(args.checkpoint, args.seed)
    size = vlm.processor.image_processor.crop_size["height"]
    data = synthetic_data(vlm, args.batch_size, size, args.seed)
    if args.train_steps:
        vlm = fit_captions(vlm, data, args.train_steps, args.seed)
    loss_fn = forget_loss_fn(vlm, data, data.forget)
    n_params = sum(parameter.numel() for parameter in vlm.model.parameters())
    print(f"model {vlm.name}: {n_params / 1e6:.2f}M parameters, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    for repeat in range(args.repeats):
        timing = time_ratios(vlm, loss_fn, args.timing_samples)
        print(f"[{repeat + 1}/{args.repeats}] gradient {timing['gradient_s']:.3f}s  "
              f"HVP fresh {timing['fresh_hvp_s']:.3f}s (ratio {timing['fresh_ratio']:.2f})  "
              f"HVP reusing graph {timing['reused_hvp_s']:.3f}s (ratio {timing['reused_ratio']:.2f})")
    if args.skip_trace:
        return
    budget = hutchpp_budget(vlm, loss_fn, args.probes, args.sketch_sizes, args.max_residual, args.seed)
    print(f"Hutchinson, {args.probes} probes: trace {budget['hutchinson_trace']:.4g} "
          f"± {budget['hutchinson_stderr']:.3g}")
    for sketch, row in budget["hutchpp"].items():
        reached = "reached" if row["reached"] else f"NOT reached within {args.max_residual} residual probes"
        print(f"Hutch++ sketch {sketch}: {row['n_hvp']} HVPs, trace {row['trace']:.4g} ± {row['stderr']:.3g} "
              f"(low-rank part {row['low_rank_trace']:.4g}), target {reached}")


if __name__ == "__main__":
    main()
