"""Sharpness probes: Hessian trace and eigenvalues, ε-sharpness and loss surfaces.

Every registered probe is called as ``probe(model, loss_fn, params=None, *, generator, ...)``.
``model`` is the ``nn.Module``. ``loss_fn`` is a closure over fixed batches that returns a
scalar (see :func:`forget_loss_fn` and :func:`retain_loss_fn`). ``params`` is a list of
``(name, parameter)`` pairs, a name filter ("all", "language_model", "vision_tower",
"multi_modal_projector" or a regular expression), or None for every trainable parameter that
receives a gradient. :func:`interpolate_checkpoints` takes several models and is not in the
registry.
"""

from halluc_bench.probes.eigen import EigenEstimate, lanczos_eigenvalues, power_iteration_eigenvalues
from halluc_bench.probes.hvp import (
    NAME_FILTERS,
    HessianOperator,
    double_backward_attention,
    filter_parameters,
    hessian_operator,
    hessian_vector_product,
    probe_mode,
    select_parameters,
)
from halluc_bench.probes.losses import batch_loss_fn, forget_loss_fn, retain_loss_fn
from halluc_bench.probes.registry import PROBES
from halluc_bench.probes.sharpness import SharpnessEstimate, epsilon_sharpness
from halluc_bench.probes.surface import (
    InterpolationPath,
    Surface1D,
    Surface2D,
    interpolate_checkpoints,
    loss_surface_1d,
    loss_surface_2d,
    normalize_direction,
    random_direction,
)
from halluc_bench.probes.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "NAME_FILTERS",
    "PROBES",
    "EigenEstimate",
    "HessianOperator",
    "InterpolationPath",
    "SharpnessEstimate",
    "Surface1D",
    "Surface2D",
    "TraceEstimate",
    "batch_loss_fn",
    "double_backward_attention",
    "epsilon_sharpness",
    "filter_parameters",
    "forget_loss_fn",
    "hessian_operator",
    "hessian_vector_product",
    "hutchinson_trace",
    "hutchpp_trace",
    "interpolate_checkpoints",
    "lanczos_eigenvalues",
    "loss_surface_1d",
    "loss_surface_2d",
    "normalize_direction",
    "power_iteration_eigenvalues",
    "probe_mode",
    "random_direction",
    "retain_loss_fn",
    "select_parameters",
]
