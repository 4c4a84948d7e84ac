"""Sharpness probes of the full audit, one stored record per model and probe.

Every probe of a repeat uses the same fixed example sets (:mod:`halluc_bench.audit_sets`) and a
generator seeded with the repeat's seed, so the numbers of different models are comparable.
They share the Rademacher probes, the Lanczos start vector and the raw random direction, which
the loss surface then filter-normalises to each model's own weights.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from halluc_bench.audit import AuditContext, cached, probe_trace
from halluc_bench.audit_sets import ProbeSets
from halluc_bench.models.vlm import VisionLanguageModel
from halluc_bench.probes.hvp import evaluation_mode

logger = logging.getLogger(__name__)


def _generator(context: AuditContext) -> torch.Generator:
    return torch.Generator().manual_seed(context.config.seed)


def _forget_loss(vlm: VisionLanguageModel, sets: ProbeSets):
    from halluc_bench.probes.losses import forget_loss_fn

    return forget_loss_fn(vlm, sets.data, sets.forget)


def retain_nll(vlm: VisionLanguageModel, sets: ProbeSets) -> float:
    """Return the mean token NLL of the faithful caption tokens of the retain probes."""
    from halluc_bench.probes.losses import retain_loss_fn

    loss_fn = retain_loss_fn(vlm, sets.data, sets.retain)
    with evaluation_mode(vlm.model), torch.no_grad():
        return float(loss_fn(vlm.model))


def probe_retain_trace(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Hutchinson estimate of the Hessian trace of the retain loss, with the trace probe count of the forget trace."""
    from halluc_bench.probes.losses import retain_loss_fn
    from halluc_bench.probes.trace import hutchinson_trace

    probes = context.config.trace_probes
    estimate = hutchinson_trace(
        vlm.model, retain_loss_fn(vlm, sets.data, sets.retain), generator=_generator(context), max_probes=probes,
        min_probes=probes, tolerance=0.0,
    )
    return {"hessian_trace": estimate.to_dict(), "examples": len(sets.retain)}


def probe_hutchpp(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Hutch++ estimate of the Hessian trace of the forget loss, with a fixed number of products."""
    from halluc_bench.probes.trace import hutchpp_trace

    settings = context.config.full
    estimate = hutchpp_trace(
        vlm.model, _forget_loss(vlm, sets), generator=_generator(context), sketch_size=settings.hutchpp_sketch,
        max_probes=settings.hutchpp_probes, min_probes=settings.hutchpp_probes, tolerance=0.0,
    )
    return {"hessian_trace": estimate.to_dict(), "examples": len(sets.forget)}


def probe_eigenvalues(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Top Hessian eigenvalues of the forget loss by Lanczos, largest magnitude first."""
    from halluc_bench.probes.eigen import lanczos_eigenvalues

    settings = context.config.full
    estimate = lanczos_eigenvalues(
        vlm.model, _forget_loss(vlm, sets), generator=_generator(context), k=settings.eigenvalues,
        max_iter=max(settings.lanczos_iterations, settings.eigenvalues),
    )
    return {"eigen": estimate.to_dict(), "examples": len(sets.forget)}


def probe_sharpness(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Epsilon-sharpness of the forget loss in the absolute L2 ball of ``sharpness_radius``."""
    from halluc_bench.probes.sharpness import epsilon_sharpness

    settings = context.config.full
    estimate = epsilon_sharpness(
        vlm.model, _forget_loss(vlm, sets), radius=settings.sharpness_radius, steps=settings.sharpness_steps,
    )
    return {"sharpness": estimate.to_dict(), "examples": len(sets.forget)}


def probe_surface(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Forget loss along one filter-normalised random direction (biases and norm weights held fixed)."""
    from halluc_bench.probes.surface import loss_surface_1d

    settings = context.config.full
    alphas = torch.linspace(-settings.surface_span, settings.surface_span, settings.surface_points).tolist()
    surface = loss_surface_1d(vlm.model, _forget_loss(vlm, sets), generator=_generator(context), alphas=alphas)
    return {"surface": surface.to_dict(), "examples": len(sets.forget)}


def probe_hallucination(context: AuditContext, vlm: VisionLanguageModel, sets: ProbeSets) -> dict:
    """Mean probability of the hallucinated-mention tokens of the hallucination probe set."""
    from halluc_bench.attacks.summary import hallucination_probability

    return {"hallucination_probability": hallucination_probability(vlm, sets.data, sets.hallucination),
            "examples": len(sets.hallucination)}


# Record name under ``<model>/probe/`` -> probe; "trace" is the standard audit's forget-loss trace.
MODEL_PROBES: dict[str, Callable[[AuditContext, VisionLanguageModel, ProbeSets], dict]] = {
    "trace": lambda context, vlm, sets: probe_trace(context, vlm, sets.data),
    "retain_trace": probe_retain_trace,
    "hutchpp": probe_hutchpp,
    "eigen": probe_eigenvalues,
    "sharpness": probe_sharpness,
    "surface": probe_surface,
    "hallucination": probe_hallucination,
}


def probe_model(context: AuditContext, model: str, vlm: VisionLanguageModel, sets: ProbeSets) -> None:
    """Store every probe of :data:`MODEL_PROBES` for ``vlm`` under ``<model>/probe/<name>``."""
    for name, probe in MODEL_PROBES.items():
        cached(context, f"{model}/probe/{name}", lambda: probe(context, vlm, sets))


def probe_interpolation(
    context: AuditContext, unlearned: VisionLanguageModel, relearned: VisionLanguageModel, sets: ProbeSets
) -> dict:
    """Forget loss along the straight lines base -> unlearned -> relearned (the longest relearning run)."""
    from halluc_bench.probes.surface import interpolate_checkpoints

    path = interpolate_checkpoints(
        [context.base.model, unlearned.model, relearned.model], _forget_loss(context.base, sets),
        points_per_segment=context.config.full.interpolation_points, names=["base", "unlearned", "relearned"],
    )
    return {"interpolation": path.to_dict(), "examples": len(sets.forget)}
