"""The full audit profile: learning-rate selection, every attack and probe on each method, correlations.

Every method gets the same budget (unlearning steps, batch size and mined data) and a small
learning-rate grid around its default. The rate is chosen on the validation split by
:func:`halluc_bench.audit_rules.selection_rule`. Each seed of ``RunConfig.seeds`` repeats
mining, selection, unlearning, attacks and probes. The world, the audited model and the
evaluation items are fixed by the run seed, so every repeat is scored on the same questions.

Record keys (each a resumable cell, as in the standard audit): ``base/eval`` and
``base/validation`` are shared by all repeats. Everything else of repeat s has the prefix
``seed=<s>/``: ``mining``, ``base/retain_nll``, ``<model>/probe/<probe>``,
``<method>/grid/lr=<rate>/unlearn`` and ``.../validation``, ``<method>/select``,
``<method>/eval`` and ``<method>/<attack>/<setting>``. Files of repeat s (mined captions,
checkpoints of the chosen models) live in the folder ``seed=<s>/`` of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from halluc_bench.audit import BASE, AuditContext, cached, mined_data
from halluc_bench.audit_attacks import attack_model
from halluc_bench.audit_probes import probe_model, retain_nll
from halluc_bench.audit_rules import format_rate, selection_record
from halluc_bench.audit_sets import ProbeSets, build_probe_sets
from halluc_bench.evaluation import EvaluationSet, build_evaluation_set, evaluate, evaluate_chair
from halluc_bench.models.loader import load_vlm
from halluc_bench.results.store import RunDirectory, ensure_writable_dir
from halluc_bench.unlearning.data import UnlearningData

logger = logging.getLogger(__name__)


class SeedRun(RunDirectory):
    """One repeat's view of a run directory: record keys get the prefix ``seed=<s>/``, files go to ``seed=<s>/``."""

    def __init__(self, parent: RunDirectory, seed: int):
        self.parent = parent
        self.prefix = f"seed={seed}"
        self.root = ensure_writable_dir(parent.root / self.prefix)
        self.records_dir = parent.records_dir / self.prefix

    def has(self, key: str) -> bool:
        return self.parent.has(f"{self.prefix}/{key}")

    def get(self, key: str) -> dict:
        return self.parent.get(f"{self.prefix}/{key}")

    def put(self, key: str, record: dict) -> None:
        self.parent.put(f"{self.prefix}/{key}", record)

    def records(self) -> dict[str, dict]:
        """Return the repeat's records by key, without the prefix."""
        start = len(self.prefix) + 1
        return {key[start:]: record for key, record in self.parent.records().items() if key.startswith(f"{self.prefix}/")}

    def clear(self) -> None:
        raise TypeError("clear the parent RunDirectory; a repeat's view does not own the records folder")


def run_full_audit(context: AuditContext, started: float) -> Path:
    """Run the full profile on a prepared context (see :func:`halluc_bench.audit.prepare_audit`) and return the run directory."""
    from halluc_bench.report.full import write_full_leaderboard
    from halluc_bench.unlearning.base import UNLEARNERS

    config, base = context.config, context.base
    for method in config.methods:
        UNLEARNERS.get(method)  # an unknown name fails before any expensive stage, listing the valid names
    validation = build_validation_set(context)
    cached(context, f"{BASE}/eval", lambda: evaluate(base, context.eval_set))
    cached(context, f"{BASE}/validation", lambda: {"chair": evaluate_chair(base, validation), "split": validation.split})
    for seed in tqdm(config.seeds, desc="seeds", unit="seed", disable=len(config.seeds) == 1):
        audit_seed(context, validation, seed)
    paths = write_full_leaderboard(context.run, config)
    logger.info("full audit finished in %.1f s; leaderboard at %s", time.perf_counter() - started, paths["markdown"])
    return context.run.root


def build_validation_set(context: AuditContext) -> EvaluationSet:
    """Fix the validation captions that select learning rates: CHAIR only, drawn with the run seed."""
    config, eval_set = context.config, context.eval_set
    return build_evaluation_set(
        context.world, config.full.selection_split, context.base, eval_set.pope_definition, eval_set.chair_definition,
        config.seed, caption_images=config.full.selection_caption_images or config.caption_images, pope_strategies=(),
    )


def seed_context(context: AuditContext, seed: int) -> AuditContext:
    """Return the context of one repeat: the run seed replaced by ``seed`` and records under ``seed=<s>/``."""
    config = dataclasses.replace(context.config, seed=seed)
    return AuditContext(config, SeedRun(context.run, seed), context.world, context.base, context.eval_set)


def audit_seed(context: AuditContext, validation: EvaluationSet, seed: int) -> None:
    """Mine, probe the base model, then select, evaluate, probe and attack every method, for one repeat."""
    repeat = seed_context(context, seed)
    data = mined_data(repeat)
    sets = build_probe_sets(repeat, data)
    base_retain = cached(repeat, f"{BASE}/retain_nll", lambda: {"retain_nll": retain_nll(context.base, sets)})
    base_validation = {**context.run.get(f"{BASE}/validation"), **base_retain}
    probe_model(repeat, BASE, context.base, sets)
    for method in tqdm(repeat.config.methods, desc=f"methods (seed {seed})", unit="method"):
        model_dir = select_method(repeat, validation, base_validation, method, data, sets)
        unlearned = load_vlm(model_dir, attn_implementation="eager", name=method)
        cached(repeat, f"{method}/eval", lambda: evaluate(unlearned, context.eval_set))
        probe_model(repeat, method, unlearned, sets)
        attack_model(repeat, method, unlearned, sets)


def grid_rates(center: float, factors: tuple[float, ...]) -> list[float]:
    """Return a learning-rate grid: the run's unlearning rate ``center`` times each factor.

    Every method shares one grid centered on ``RunConfig.unlearn_learning_rate``, so all get
    the same budget. The methods' own default rate, 1e-4, collapses the built-in organism.
    """
    # Rounded to 12 significant digits so that 1e-05 * 3 is stored as 3e-05, not 3.0000000000000004e-05.
    return [float(f"{center * factor:.12g}") for factor in factors]


def grid_model_dir(context: AuditContext, method: str, rate: float) -> Path:
    return context.run.root / "models" / method / f"lr={format_rate(rate)}"


def select_method(
    context: AuditContext, validation: EvaluationSet, base_validation: dict, method: str, data: UnlearningData,
    sets: ProbeSets,
) -> Path:
    """Unlearn at every rate of the grid, score each on validation, store the choice and return its checkpoint."""
    settings = context.config.full
    rates = grid_rates(context.config.unlearn_learning_rate, settings.lr_factors)
    pairs = [grid_point(context, validation, method, rate, data, sets) for rate in rates]
    record = cached(context, f"{method}/select", lambda: selection_record(rates, pairs, base_validation, settings))
    chosen = grid_model_dir(context, method, record["learning_rate"])
    for rate in rates:
        folder = grid_model_dir(context, method, rate)
        if folder != chosen and folder.exists():
            logger.info("removing checkpoint %s: learning rate %g was not chosen", folder, rate)
            shutil.rmtree(folder)
    return chosen


def grid_point(
    context: AuditContext, validation: EvaluationSet, method: str, rate: float, data: UnlearningData, sets: ProbeSets
) -> tuple[dict, dict]:
    """Return the (unlearn, validation) records of one grid point, computing those that are missing."""
    label = f"{method}/grid/lr={format_rate(rate)}"
    model_dir = grid_model_dir(context, method, rate)
    unlearn_record = cached(context, f"{label}/unlearn", lambda: unlearn_at_rate(context, method, data, rate, model_dir))

    def score() -> dict:
        vlm = load_vlm(model_dir, attn_implementation="eager", name=f"{method}@{format_rate(rate)}")
        return {"chair": evaluate_chair(vlm, validation), "split": validation.split, "retain_nll": retain_nll(vlm, sets)}

    return unlearn_record, cached(context, f"{label}/validation", score)


def unlearn_at_rate(context: AuditContext, method: str, data: UnlearningData, rate: float, model_dir: Path) -> dict:
    """Unlearn with the shared budget at ``rate`` and save the model; a run stopped by a non-finite loss is kept.

    The record is the run summary plus ``stopped``: the error message of a stopped run, else None.
    A stopped run keeps the weights of its last finite step and counts as collapsed.
    """
    from halluc_bench.unlearning.base import make_unlearner
    from halluc_bench.unlearning.training import NonFiniteLossError

    config = context.config
    unlearner = make_unlearner(method, steps=config.unlearn_steps, batch_size=config.unlearn_batch_size,
                               seed=config.seed, learning_rate=rate)
    stopped = None
    try:
        result = unlearner.unlearn(context.base, data, reference=context.base)
    except NonFiniteLossError as error:
        if error.result is None:
            raise
        result, stopped = error.result, str(error)
    result.save(model_dir)
    return {**result.summary(), "stopped": stopped}
