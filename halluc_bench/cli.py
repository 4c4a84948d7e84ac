"""The ``halluc-bench`` command line: parses options, configures logging, calls the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from halluc_bench import __version__
from halluc_bench.config import PROFILES, FullProfileSettings, RunConfig, default_cache_dir

logger = logging.getLogger("halluc_bench")
FULL_OUTPUT_DIR = Path("runs/full")  # a full run does not collide with the standard run in runs/default

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Errors that describe bad input; they are printed as one line instead of a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected at least one comma-separated name")
    return names


def add_run_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``halluc-bench run``: the standard audit, or the full one with ``--profile full``."""
    defaults = RunConfig()
    parser = subparsers.add_parser(
        "run",
        help="run the robustness audit (evaluate, unlearn, attack, probe, leaderboard)",
        description="Run the robustness audit: the standard profile by default, or with --profile full a "
        "learning-rate grid per method, every attack and sharpness probe, and sharpness-resurgence correlations. "
        "Without --checkpoint it audits the built-in organism, a small LLaVA trained on the toy world "
        "(built on first use and cached).",
    )

    parser.add_argument("--output-dir", type=Path, default=None,
                        help=f"run directory for config, records, checkpoints and leaderboard (default: "
                             f"{defaults.output_dir} for the standard profile, {FULL_OUTPUT_DIR} for the full one)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"cache of the toy world and organism (default: $HALLUC_BENCH_CACHE or {default_cache_dir()})")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="local Hugging Face image-text-to-text checkpoint directory to audit (default: the organism)")
    parser.add_argument("--world", type=Path, default=None,
                        help="COCO-format folder (annotations/instances_<split>.json, captions_<split>.json, images) "
                        "to evaluate --checkpoint on (default: the toy world)")
    parser.add_argument("--methods", type=_name_list, default=None,
                        help=f"comma-separated unlearning methods, or 'all' for every registered one (default: "
                        f"{','.join(defaults.methods)} for the standard profile, all for the full profile); "
                        "see `halluc-bench methods`")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of every stage (default: %(default)s)")
    parser.add_argument("--unlearn-steps", type=int, default=defaults.unlearn_steps,
                        help="optimizer steps of every unlearning method (default: %(default)s)")
    parser.add_argument("--unlearn-batch-size", type=int, default=defaults.unlearn_batch_size,
                        help="forget and retain examples per unlearning step (default: %(default)s)")
    parser.add_argument("--mine-images", type=int, default=defaults.mine_images,
                        help="training images captioned to mine forget and retain spans (default: %(default)s)")
    parser.add_argument("--unlearn-lr", type=float, default=defaults.unlearn_learning_rate,
                        help="learning rate of every unlearning method; with --profile full, the center of each method's "
                             "learning-rate grid (default: %(default)s)")
    parser.add_argument("--relearn-samples", type=int, default=defaults.relearn_samples,
                        help="hallucinated captions the relearning attack fine-tunes on (default: %(default)s)")
    parser.add_argument("--relearn-steps", type=_int_list, default=defaults.relearn_steps,
                        help="comma-separated optimizer step counts at which the attack is evaluated "
                        f"(default: {','.join(map(str, defaults.relearn_steps))})")
    parser.add_argument("--relearn-lr", type=float, default=defaults.relearn_learning_rate,
                        help="learning rate of the relearning attack (default: %(default)s)")
    parser.add_argument("--relearn-batch-size", type=int, default=defaults.relearn_batch_size,
                        help="captions per relearning step (default: %(default)s)")
    parser.add_argument("--trace-examples", type=int, default=defaults.trace_examples,
                        help="forget examples in the fixed batch the Hessian trace is taken on (default: %(default)s)")
    parser.add_argument("--eval-split", default=defaults.eval_split,
                        help="split of the world that POPE and CHAIR evaluate on (default: %(default)s)")
    parser.add_argument("--mine-split", default=defaults.mine_split,
                        help="split of the world whose images are captioned to mine forget and retain data "
                        "(default: %(default)s)")
    parser.add_argument("--trace-probes", type=int, default=defaults.trace_probes,
                        help="Rademacher probes of the Hessian-trace estimate (default: %(default)s)")
    parser.add_argument("--pope-images", type=int, default=None,
                        help="images per POPE strategy, 6 questions each (default: the POPE task definition's count)")
    parser.add_argument("--caption-images", type=int, default=None,
                        help="evaluation images captioned for CHAIR (default: the CHAIR task definition's count)")
    parser.add_argument("--mme-images", type=int, default=None,
                        help="evaluation images per MME subtask, 2 questions each (default: the MME task definition's count)")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="torch CPU threads; keep it fixed to reproduce numbers (default: %(default)s)")
    parser.add_argument("--no-resume", action="store_true",
                        help="discard records in --output-dir and start over (default: resume)")
    _add_full_profile_arguments(parser)
    parser.set_defaults(handler=_handle_run)


def _joined(values: tuple) -> str:
    return ",".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values) or "none"


# (option, FullProfileSettings field, parser, help without the default)
FULL_PROFILE_OPTIONS = (
    ("--seeds", "seeds", _int_list, "comma-separated seeds; each one repeats mining, learning-rate selection, "
     "unlearning, attacks and probes (default: --seed alone)"),
    ("--lr-grid", "lr_factors", _float_list, "comma-separated multipliers of --unlearn-lr that form every method's learning-rate grid"),
    ("--selection-split", "selection_split", str, "split whose captions select the learning rate"),
    ("--selection-caption-images", "selection_caption_images", int,
     "validation images captioned per grid point (default: --caption-images)"),
    ("--min-recall-share", "min_recall_share", float,
     "a learning rate qualifies when its validation recall is at least this share of the base model's"),
    ("--collapse-recall-share", "collapse_recall_share", float,
     "recall below this share of the base model's flags a model as collapsed"),
    ("--collapse-retain-rise", "collapse_retain_rise", float,
     "retain-loss rise in nats (training log, or retain NLL over the base model's) that flags a collapse"),
    ("--relearn-sample-grid", "relearn_sample_grid", _int_list,
     "comma-separated extra attacker sample counts k besides --relearn-samples"),
    ("--noise-sigmas", "noise_sigmas", _float_list, "comma-separated noise levels relative to each tensor's RMS"),
    ("--noise-draws", "noise_draws", int, "noise draws per sigma"),
    ("--worst-case-radii", "worst_case_radii", _float_list,
     "comma-separated L2 radii of the worst-case attack, relative to the weight norm"),
    ("--worst-case-steps", "worst_case_steps", int, "projected gradient-ascent steps of the worst-case attack"),
    ("--quantization", "quantization", _name_list, "comma-separated settings int<bits>-per_channel|per_group"),
    ("--quantization-group-size", "quantization_group_size", int, "inputs per scale of per_group quantization"),
    ("--probe-examples", "probe_examples", int,
     "hallucinated captions on which the hallucinated-token probability is measured"),
    ("--hutchpp-sketch", "hutchpp_sketch", int, "sketch columns of the Hutch++ trace"),
    ("--hutchpp-probes", "hutchpp_probes", int, "residual probes of the Hutch++ trace"),
    ("--eigenvalues", "eigenvalues", int, "top Hessian eigenvalues estimated by Lanczos"),
    ("--lanczos-iterations", "lanczos_iterations", int, "Hessian-vector products of the Lanczos iteration at most"),
    ("--sharpness-radius", "sharpness_radius", float, "absolute L2 radius of the epsilon-sharpness ball"),
    ("--sharpness-steps", "sharpness_steps", int, "gradient-ascent steps of epsilon-sharpness"),
    ("--surface-points", "surface_points", int, "points of the 1-D loss surface"),
    ("--surface-span", "surface_span", float, "the 1-D loss surface covers alpha in [-span, span]"),
    ("--interpolation-points", "interpolation_points", int, "points per segment of base -> unlearned -> relearned"),
)


def _add_full_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default=RunConfig().profile,
                        help="standard: the fixed-rate audit; full: learning-rate grid, every attack and probe, "
                        "and sharpness-resurgence correlations (default: %(default)s)")
    group = parser.add_argument_group("full profile", "options read only with --profile full")
    defaults = FullProfileSettings()
    for option, name, parse, text in FULL_PROFILE_OPTIONS:
        value = getattr(defaults, name)
        default_value = _joined(value) if isinstance(value, tuple) else value
        default_text = "" if "(default:" in text else f" (default: {default_value})"
        metavar = option.lstrip("-").upper().replace("-", "_")
        group.add_argument(option, dest=f"full_{name}", type=parse, default=None, metavar=metavar,
                           help=f"{text}{default_text}")


def _full_settings(args: argparse.Namespace) -> FullProfileSettings:
    passed = {name: getattr(args, f"full_{name}") for _, name, _, _ in FULL_PROFILE_OPTIONS
              if getattr(args, f"full_{name}") is not None}
    if passed and args.profile != "full":
        options = [option for option, name, _, _ in FULL_PROFILE_OPTIONS if name in passed]
        raise ValueError(f"{', '.join(options)} {'applies' if len(options) == 1 else 'apply'} only to the full profile; add --profile full")
    return FullProfileSettings(**passed)


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    from halluc_bench.unlearning.base import UNLEARNERS

    if args.methods is None:
        return tuple(UNLEARNERS.names()) if args.profile == "full" else RunConfig().methods
    if "all" in args.methods:
        return tuple(UNLEARNERS.names())
    for method in args.methods:
        UNLEARNERS.get(method)  # fail before any expensive stage
    return args.methods


def run_config(args: argparse.Namespace) -> RunConfig:
    """Build the run configuration from parsed ``run`` options."""
    return RunConfig(
        seed=args.seed,
        output_dir=args.output_dir or (FULL_OUTPUT_DIR if args.profile == "full" else RunConfig.output_dir),
        cache_dir=args.cache_dir or default_cache_dir(),
        checkpoint=args.checkpoint,
        world=args.world,
        methods=_methods(args),
        unlearn_steps=args.unlearn_steps,
        unlearn_batch_size=args.unlearn_batch_size,
        mine_images=args.mine_images,
        relearn_samples=args.relearn_samples,
        relearn_steps=args.relearn_steps,
        unlearn_learning_rate=args.unlearn_lr,
        relearn_learning_rate=args.relearn_lr,
        relearn_batch_size=args.relearn_batch_size,
        trace_examples=args.trace_examples,
        eval_split=args.eval_split,
        mine_split=args.mine_split,
        trace_probes=args.trace_probes,
        pope_images=args.pope_images,
        caption_images=args.caption_images,
        mme_images=args.mme_images,
        threads=args.threads,
        profile=args.profile,
        full=_full_settings(args),
        resume=not args.no_resume,
    )


def _handle_run(args: argparse.Namespace) -> int:
    from halluc_bench.audit import run_audit

    run_dir = run_audit(run_config(args))
    print((run_dir / "leaderboard.md").read_text(encoding="utf-8"))
    print(f"results: {run_dir}")
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line with a pointer to ``--help``, not the whole usage block.

    Sub-command parsers inherit the class, since ``add_subparsers`` builds them with the parent's class.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    from halluc_bench.tasks.score_cli import add_score_command
    from halluc_bench.unlearning.cli import add_methods_command

    parser = OneLineErrorParser(
        prog="halluc-bench",
        description="Audit whether unlearning removed object hallucination from a multimodal LLM or only hid it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS,
                        help="lowest level of log messages printed on stderr (default: %(default)s)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_command(subparsers)
    add_score_command(subparsers)
    add_methods_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``halluc-bench`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_level = max(logging.WARNING, logging.getLevelName(args.log_level))
    for noisy in ("transformers", "httpx", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(quiet_level)
    if not sys.stderr.isatty():
        # Hugging Face's weight-loading bars write cursor-movement codes into redirected logs.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        logger.debug("error details", exc_info=True)
        print(f"halluc-bench: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("halluc-bench: interrupted; finished cells are kept and a rerun resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
