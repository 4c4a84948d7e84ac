"""Top eigenvalues of the loss Hessian: Lanczos, and power iteration with deflation.

Both use only Hessian-vector products. "Top" means largest in absolute value by default,
because after gradient ascent a strongly negative curvature is as sharp as a positive one.
Lanczos can also rank by algebraic value.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from halluc_bench.probes.hvp import LossFn, ParameterSpec, gaussian, hessian_operator
from halluc_bench.probes.registry import PROBES

logger = logging.getLogger(__name__)

Which = Literal["magnitude", "algebraic"]
BREAKDOWN = 1e-10  # relative size of a Lanczos residual below which the Krylov space is invariant


@dataclass
class EigenEstimate:
    """Top eigenvalues, ordered as requested, with their residual norms ‖Hu − λu‖."""

    eigenvalues: list[float]
    residuals: list[float]
    converged: bool
    iterations: int
    n_hvp: int
    dimension: int
    method: str
    which: str = "magnitude"
    # Unit eigenvectors as flat fp32 vectors over the selected parameters, when requested.
    eigenvectors: list[torch.Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Return the fields as plain values, without the eigenvectors."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "eigenvectors"}


def _check_request(k: int, max_iter: int, tolerance: float) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if max_iter < k:
        raise ValueError(f"max_iter ({max_iter}) must be at least k ({k})")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")


def _order(values: torch.Tensor, which: Which) -> torch.Tensor:
    if which == "magnitude":
        return torch.argsort(values.abs(), descending=True)
    if which == "algebraic":
        return torch.argsort(values, descending=True)
    raise ValueError(f"which must be 'magnitude' or 'algebraic', got {which!r}")


def _ritz(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decompose the Lanczos tridiagonal matrix in float64: (values, vectors by column)."""
    size = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(tridiagonal)


def _orthogonalize(vector: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    # Two passes of classical Gram-Schmidt keep the basis orthogonal to working precision.
    for _ in range(2):
        for direction in basis:
            vector = vector - torch.dot(direction, vector) * direction
    return vector


@PROBES.register("lanczos")
def lanczos_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    k: int = 1,
    max_iter: int = 80,
    tolerance: float = 1e-4,
    which: Which = "magnitude",
    return_vectors: bool = False,
) -> EigenEstimate:
    """Estimate the k top eigenvalues of the Hessian of ``loss_fn`` by Lanczos iteration.

    Estimator: Lanczos tridiagonalisation from a Gaussian start vector drawn from
    ``generator``, with full reorthogonalisation (Golub and Van Loan, "Matrix Computations").
    The eigenvalues are the Ritz values of the tridiagonal matrix. Tolerance: stops when
    each of the k Ritz pairs has the residual bound |β_j·s_j| ≤ ``tolerance``·|θ| (Paige's
    bound on ‖Hy − θy‖), when the Krylov space becomes invariant, or after ``max_iter``
    products. Returns an :class:`EigenEstimate` ordered by ``which``.
    """
    _check_request(k, max_iter, tolerance)
    _order(torch.zeros(1), which)  # validates ``which`` before any product
    with hessian_operator(model, loss_fn, params) as operator:
        if k > operator.dimension:
            raise ValueError(f"k={k} exceeds the {operator.dimension} parameters that receive a gradient")
        start = gaussian(operator.dimension, generator, operator.device, operator.dtype)
        basis = [start / start.norm()]
        alphas: list[float] = []
        betas: list[float] = []
        converged = False
        for _ in tqdm(range(min(max_iter, operator.dimension)), desc="lanczos", leave=False, disable=None):
            product = operator.matvec(basis[-1])
            alpha = float(torch.dot(basis[-1], product))
            alphas.append(alpha)
            product = product - alpha * basis[-1] - (betas[-1] * basis[-2] if betas else 0.0)
            product = _orthogonalize(product, basis)
            beta = float(product.norm())
            values, vectors = _ritz(alphas, betas)
            chosen = _order(values, which)[:k]
            residuals = [abs(beta * float(vectors[-1, index])) for index in chosen]
            scale = max(float(values.abs().max()), 1e-30)
            if beta <= BREAKDOWN * scale or len(alphas) == operator.dimension:
                converged = len(alphas) >= k
                break
            if len(alphas) >= k and all(
                residual <= tolerance * abs(float(values[index])) for residual, index in zip(residuals, chosen)
            ):
                converged = True
                break
            betas.append(beta)
            basis.append(product / beta)
        eigenvectors = None
        if return_vectors:
            stacked = torch.stack(basis[: len(alphas)], dim=1).double()  # (dimension, iterations)
            eigenvectors = [(stacked @ vectors[:, index]).float() for index in chosen]
        logger.info("lanczos: top eigenvalues %s after %d products", [float(values[i]) for i in chosen], len(alphas))
        return EigenEstimate(
            eigenvalues=[float(values[index]) for index in chosen],
            residuals=residuals,
            converged=converged,
            iterations=len(alphas),
            n_hvp=operator.n_products,
            dimension=operator.dimension,
            method="lanczos",
            which=which,
            eigenvectors=eigenvectors,
        )


@PROBES.register("power_iteration")
def power_iteration_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    params: ParameterSpec = None,
    *,
    generator: torch.Generator,
    k: int = 1,
    max_iter: int = 100,
    tolerance: float = 1e-4,
    return_vectors: bool = False,
) -> EigenEstimate:
    """Estimate the k eigenvalues of largest magnitude by power iteration with deflation.

    Estimator: power iteration on H − Σ λ_j u_j u_jᵀ (Hotelling deflation of the eigenpairs
    already found), Rayleigh quotient as the eigenvalue, Gaussian start vectors from
    ``generator``. Tolerance: each eigenvalue stops when its relative change between
    iterations is below ``tolerance``, or after ``max_iter`` products. Convergence is slow when
    two eigenvalues have nearly equal magnitude (Lanczos is then the better choice). Returns an
    :class:`EigenEstimate` ordered by magnitude; ``residuals`` are ‖Hu − λu‖ of the deflated
    operator at the last iteration.
    """
    _check_request(k, max_iter, tolerance)
    with hessian_operator(model, loss_fn, params) as operator:
        if k > operator.dimension:
            raise ValueError(f"k={k} exceeds the {operator.dimension} parameters that receive a gradient")
        values: list[float] = []
        vectors: list[torch.Tensor] = []
        residuals: list[float] = []
        all_converged, iterations = True, 0
        for _ in range(k):
            value, vector, residual, converged, used = _power_iterate(operator, generator, values, vectors, max_iter,
                                                                       tolerance)
            values.append(value)
            vectors.append(vector)
            residuals.append(residual)
            all_converged = all_converged and converged
            iterations += used
        order = sorted(range(k), key=lambda index: -abs(values[index]))
        return EigenEstimate(
            eigenvalues=[values[index] for index in order],
            residuals=[residuals[index] for index in order],
            converged=all_converged,
            iterations=iterations,
            n_hvp=operator.n_products,
            dimension=operator.dimension,
            method="power_iteration",
            which="magnitude",
            eigenvectors=[vectors[index] for index in order] if return_vectors else None,
        )


def _power_iterate(operator, generator, values, vectors, max_iter, tolerance):
    """Run power iteration on the deflated operator: (value, unit vector, residual, converged, iterations)."""
    vector = _orthogonalize(gaussian(operator.dimension, generator, operator.device, operator.dtype), vectors)
    vector = vector / vector.norm()
    value, residual = 0.0, float("inf")
    for iteration in range(1, max_iter + 1):
        product = operator.matvec(vector)
        for found_value, found_vector in zip(values, vectors):
            product = product - found_value * torch.dot(found_vector, vector) * found_vector
        new_value = float(torch.dot(vector, product))  # Rayleigh quotient of a unit vector
        residual = float((product - new_value * vector).norm())
        norm = float(product.norm())
        if norm == 0.0:  # the deflated operator vanishes on this vector: eigenvalue 0
            return 0.0, vector, 0.0, True, iteration
        vector = product / norm
        if iteration > 1 and abs(new_value - value) / (abs(new_value) + 1e-30) < tolerance:
            return new_value, vector, residual, True, iteration
        value = new_value
    logger.warning("power iteration did not converge in %d products (last change above %g)", max_iter, tolerance)
    return value, vector, residual, False, max_iter
