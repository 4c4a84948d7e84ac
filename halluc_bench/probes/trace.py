"""Stochastic estimates of the Hessian trace: Hutchinson and Hutch++.

Both average vᵀHv over random sign vectors v; Hutch++ first removes a low-rank part of H,
whose trace it computes exactly, and averages only the remainder. A negative trace is a
legitimate result away from a minimum (after gradient ascent, say) and is never clipped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from halluc_bench.probes.hvp import LossFn, ParameterSpec, hessian_operator, rademacher
from halluc_bench.probes.registry import PROBES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceConfig:
    """When to stop averaging probes.

    After each probe from min(``min_probes``, ``max_probes``) on, the average stops when the change of the running
    estimate Δ satisfies |Δ| / (|estimate| + ``epsilon``) < ``tolerance``, or when the standard
    error has reached ``target_stderr``; otherwise it stops at ``max_probes``. A tolerance of
    0 disables the relative-change rule (a fixed number of probes).
    """

    max_probes: int = 100
    min_probes: int = 10  # guards the relative-change rule against a lucky early pair of probes
    tolerance: float = 1e-3
    epsilon: float = 1e-6
    target_stderr: float | None = None

    def __post_init__(self) -> None:
        if self.max_probes < 1:
            raise ValueError(f"max_probes must be at least 1, got {self.max_probes}")
        if self.min_probes < 1:
            raise ValueError(f"min_probes must be at least 1, got {self.min_probes}")
        if self.tolerance < 0 or self.epsilon < 0:
            raise ValueError(f"tolerance and epsilon must be non-negative, got {self.tolerance} and {self.epsilon}")
        if self.target_stderr is not None and self.target_stderr <= 0:
            raise ValueError(f"target_stderr must be positive when given, got {self.target_stderr}")


@dataclass
class TraceEstimate:
    """A trace estimate: the mean, its standard error (NaN from fewer than 2 probes) and the run."""

    trace: float
    stderr: float
    n_probes: int  # random probes averaged (Hutch++: residual probes only)
    converged: bool
    history: list[float] = field(repr=False)  # the estimate after each probe
    method: str = "hutchinson"
    n_hvp: int = 0  # Hessian-vector products used, sketch included
    dimension: int = 0  # number of parameters the Hessian covers
    low_rank_trace: float = 0.0  # Hutch++: exact trace of the sketched part
    sketch_size: int = 0
    stop_reason: str = ""  # "tolerance", "target_stderr", "max_probes" or "exact"

    def to_dict(self) -> dict:
        """Return the fields as plain JSON values (non-finite numbers become None)."""
        return {key: _finite_or_none(value) for key, value in dataclasses.asdict(self).items()}


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    return value


class RunningMean:
    """Welford's running mean and variance, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (value - self.mean)

    @property
    def stderr(self) -> float:
        """Standard error of the mean: sample standard deviation / sqrt(n); NaN for n < 2."""
        if self.n < 2:
            return math.nan
        return math.sqrt(self._m2 / (self.n - 1) / self.n)


def average_probes(
    sample: Callable[[], float], config: TraceConfig, offset: float = 0.0, desc: str = "probes"
) -> tuple[RunningMean, list[float], bool, str]:
    """Average ``sample()`` until a stopping rule of ``config`` holds; the estimate is offset + mean."""
    stats = RunningMean()
    history: list[float] = []
    for _ in tqdm(range(config.max_probes), desc=desc, leave=False, disable=None):
        previous = offset + stats.mean
        stats.add(sample())
        estimate = offset + stats.mean
        history.append(estimate)
        if stats.n < min(config.min_probes, config.max_probes):
            continue
        if config.target_stderr is not None and stats.n >= 2 and stats.stderr <= config.target_stderr:
            return stats, history, True, "target_stderr"
        if stats.n >= 2 and abs(estimate - previous) / (abs(estimate) + config.epsilon) < config.tolerance:
            return stats, history, True, "tolerance"
    return stats, history, False, "max_probes"


def _quadratic_form(operator, vector: torch.Tensor) -> float:
    return float(torch.dot(vector.double(), operator.matvec(vector).double()))


@PROBES.register("hutchinson")
def hutchinson_trace(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    max_probes: int = 100,
    min_probes: int = 10,
    tolerance: float = 1e-3,
    epsilon: float = 1e-6,
    target_stderr: float | None = None,
) -> TraceEstimate:
    """Estimate tr(H) of ``loss_fn`` by Hutchinson's estimator.

    Estimator: the mean of vᵀHv over Rademacher vectors v (Hutchinson, 1990, "A stochastic
    estimator of the trace of the influence matrix for Laplacian smoothing splines"), unbiased, with standard error
    std(vᵀHv)/sqrt(n). Products come from double backward (:class:`HessianOperator`).
    Tolerance: the stopping rules of :class:`TraceConfig`. Returns a :class:`TraceEstimate`
    over the parameters in ``params`` that receive a gradient.
    """
    config = TraceConfig(max_probes, min_probes, tolerance, epsilon, target_stderr)
    with hessian_operator(model, loss_fn, params) as operator:

        def sample() -> float:
            return _quadratic_form(operator, rademacher(operator.dimension, generator, operator.device, operator.dtype))

        stats, history, converged, reason = average_probes(sample, config, desc="hutchinson")
        logger.info("hutchinson trace %.6g ± %.3g (standard error) after %d probes (%s)", stats.mean, stats.stderr, stats.n, reason)
        return TraceEstimate(
            trace=stats.mean,
            stderr=stats.stderr,
            n_probes=stats.n,
            converged=converged,
            history=history,
            method="hutchinson",
            n_hvp=operator.n_products,
            dimension=operator.dimension,
            stop_reason=reason,
        )


@PROBES.register("hutchpp")
def hutchpp_trace(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    sketch_size: int = 10,
    max_probes: int = 100,
    min_probes: int = 10,
    tolerance: float = 1e-3,
    epsilon: float = 1e-6,
    target_stderr: float | None = None,
) -> TraceEstimate:
    """Estimate tr(H) of ``loss_fn`` by Hutch++.

    Estimator (Meyer, Musco, Musco and Woodruff, 2021, "Hutch++: Optimal Stochastic Trace
    Estimation"): Q = orth(H·S) for a d×k Rademacher sketch S; tr(H) = tr(QᵀHQ), computed
    exactly with k products, plus Hutchinson's mean of gᵀHg over Rademacher g projected onto
    the complement of Q. The sketch costs 2k products. The standard error is that of the
    residual mean: for every sketch the residual average is unbiased for the rest of the
    trace, so its variance is the variance of the whole estimate. The classic fixed-budget
    Hutch++ with m products is ``sketch_size=m/3, max_probes=m/3, tolerance=0``.
    Tolerance: the stopping rules of :class:`TraceConfig`, on the residual probes.
    Returns a :class:`TraceEstimate` with ``low_rank_trace`` and ``sketch_size`` filled in.
    """
    if sketch_size < 1:
        raise ValueError(f"sketch_size must be at least 1, got {sketch_size}")
    config = TraceConfig(max_probes, min_probes, tolerance, epsilon, target_stderr)
    with hessian_operator(model, loss_fn, params) as operator:
        rank = min(sketch_size, operator.dimension)
        columns = [operator.matvec(rademacher(operator.dimension, generator, operator.device, operator.dtype)) for _ in range(rank)]
        # NOTE: the sketch is a dense (dimension, rank) matrix, fine for millions of parameters, not billions.
        basis, _ = torch.linalg.qr(torch.stack(columns, dim=1))  # (dimension, rank), orthonormal columns
        low_rank = sum(_quadratic_form(operator, basis[:, column]) for column in range(rank))
        if rank == operator.dimension:  # the sketch spans the whole space: the trace is exact
            return TraceEstimate(
                trace=low_rank,
                stderr=0.0,
                n_probes=0,
                converged=True,
                history=[low_rank],
                method="hutchpp",
                n_hvp=operator.n_products,
                dimension=operator.dimension,
                low_rank_trace=low_rank,
                sketch_size=rank,
                stop_reason="exact",
            )

        def sample() -> float:
            probe = rademacher(operator.dimension, generator, operator.device, operator.dtype)
            probe = probe - basis @ (basis.T @ probe)  # (dimension,), orthogonal to the sketch
            return _quadratic_form(operator, probe)

        stats, history, converged, reason = average_probes(sample, config, offset=low_rank, desc="hutch++")
        logger.info("hutch++ trace %.6g ± %.3g (standard error) after %d products (%s)", low_rank + stats.mean, stats.stderr,
                    operator.n_products, reason)
        return TraceEstimate(
            trace=low_rank + stats.mean,
            stderr=stats.stderr,
            n_probes=stats.n,
            converged=converged,
            history=history,
            method="hutchpp",
            n_hvp=operator.n_products,
            dimension=operator.dimension,
            low_rank_trace=low_rank,
            sketch_size=rank,
            stop_reason=reason,
        )
