"""Hessian-vector products by double backward, and the parameter selection every probe shares.

A Hessian-vector product H·v is the gradient of ⟨∇L(θ), v⟩ with respect to θ (Pearlmutter,
1994, "Fast exact multiplication by the Hessian"): one backward pass that keeps its graph, then a second backward pass through it. The
first pass can be kept and reused for many products (``reuse_graph=True``), so each later
product costs only the second pass.

Probes work on flat fp32 vectors (fp64 for fp64 models) over a chosen list of parameters. The list skips frozen
parameters and parameters that receive no gradient from the loss (for example a vision
tower's ``post_layernorm`` when the LLaVA projector reads the last hidden layer, which is
taken before that norm).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module], torch.Tensor]
NamedParameters = list[tuple[str, nn.Parameter]]
ParameterSpec = Sequence[tuple[str, nn.Parameter]] | str | None

# Named parameter subsets of Hugging Face LLaVA-style models. Any other string is a regular
# expression searched in each parameter name. "language_model" includes the output head.
NAME_FILTERS: dict[str, str | None] = {
    "all": None,
    "language_model": r"(^|\.)language_model\.|(^|\.)lm_head\.",
    "vision_tower": r"(^|\.)vision_tower\.",
    "multi_modal_projector": r"(^|\.)multi_modal_projector\.",
}

# An attention implementation whose backward pass is itself differentiable. PyTorch's fused
# CPU attention kernel (torch 2.13) has no double backward.
DOUBLE_BACKWARD_ATTENTION = "eager"


# ----------------------------------------------------------------------------- selection
def filter_parameters(model: nn.Module, include: str = "all", trainable_only: bool = True) -> NamedParameters:
    """Return the named parameters whose name matches ``include``.

    ``include`` is one of ``NAME_FILTERS`` or a regular expression searched in each name.
    With ``trainable_only`` the frozen parameters (``requires_grad=False``) are left out.
    Raises ValueError when the expression is invalid or nothing matches.
    """
    pattern = NAME_FILTERS.get(include, include)
    try:
        compiled = re.compile(pattern) if pattern is not None else None
    except re.error as error:
        raise ValueError(
            f"parameter filter {include!r} is neither a named subset ({', '.join(NAME_FILTERS)}) "
            f"nor a valid regular expression: {error}"
        ) from error
    selected = [
        (name, parameter)
        for name, parameter in model.named_parameters()
        if (parameter.requires_grad or not trainable_only) and (compiled is None or compiled.search(name))
    ]
    if not selected:
        kind = "trainable parameter" if trainable_only else "parameter"
        raise ValueError(f"no {kind} name matches the filter {include!r}; named subsets: {', '.join(NAME_FILTERS)}")
    return selected


def candidate_parameters(model: nn.Module, params: ParameterSpec) -> NamedParameters:
    """Resolve ``params`` (None, a name filter, or explicit pairs) to trainable named parameters.

    Explicitly passed frozen parameters are skipped with a warning, not an error.
    """
    if params is None:
        return filter_parameters(model, "all")
    if isinstance(params, str):
        return filter_parameters(model, params)
    selected: NamedParameters = []
    frozen = []
    for name, parameter in params:
        (selected if parameter.requires_grad else frozen).append((name, parameter))
    if frozen:
        logger.warning("skipping %d frozen parameters: %s", len(frozen), ", ".join(name for name, _ in frozen[:5]))
    if not selected:
        raise ValueError("every parameter passed to the probe is frozen (requires_grad=False); pass trainable ones")
    return selected


def keep_with_gradient(
    candidates: NamedParameters, gradients: Sequence[torch.Tensor | None]
) -> tuple[NamedParameters, list[torch.Tensor]]:
    """Drop the parameters whose gradient is None (not connected to the loss), logging their names."""
    kept, kept_gradients, skipped = [], [], []
    for (name, parameter), gradient in zip(candidates, gradients):
        if gradient is None:
            skipped.append(name)
        else:
            kept.append((name, parameter))
            kept_gradients.append(gradient)
    if skipped:
        logger.info("skipping %d parameters that get no gradient from the loss: %s", len(skipped), ", ".join(skipped[:5]))
    if not kept:
        raise ValueError("no selected parameter receives a gradient from loss_fn; check the loss and the filter")
    return kept, kept_gradients


def select_parameters(model: nn.Module, loss_fn: LossFn, params: ParameterSpec = None) -> NamedParameters:
    """Return the trainable parameters in ``params`` that receive a gradient from ``loss_fn``.

    Runs one forward and one backward pass (no parameter ``.grad`` is written).
    """
    candidates = candidate_parameters(model, params)
    loss = loss_fn(model)
    gradients = torch.autograd.grad(loss, [p for _, p in candidates], allow_unused=True)
    kept, _ = keep_with_gradient(candidates, gradients)
    return kept


# ----------------------------------------------------------------------------- model modes
def _attention_implementations(config) -> dict:
    """Return the attention implementation of ``config`` and of its sub-configs, nested by key."""
    implementations = {"": getattr(config, "_attn_implementation", None)}
    for key in getattr(config, "sub_configs", {}) or {}:
        sub_config = getattr(config, key, None)
        if sub_config is not None:
            implementations[key] = _attention_implementations(sub_config)
    return implementations


@contextlib.contextmanager
def double_backward_attention(model: nn.Module, implementation: str = DOUBLE_BACKWARD_ATTENTION) -> Iterator[None]:
    """Switch a Hugging Face model to ``implementation`` attention, restoring every sub-model's after.

    The previous implementation is restored on exit, also when the body raises. Modules
    without ``set_attn_implementation`` (plain PyTorch models) are left as they are.
    """
    setter = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    if setter is None or config is None:
        yield
        return
    previous = _attention_implementations(config)
    setter(implementation)
    try:
        yield
    finally:
        setter(previous)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (no dropout) and restore each module's training flag after."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


@contextlib.contextmanager
def probe_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode plus an attention implementation with double-backward support, both restored after."""
    with evaluation_mode(model), double_backward_attention(model):
        yield


# ----------------------------------------------------------------------------- flat vectors
def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector: fp64 if any tensor is fp64, else fp32."""
    dtype = torch.float64 if any(tensor.dtype == torch.float64 for tensor in tensors) else torch.float32
    return torch.cat([tensor.reshape(-1).to(dtype) for tensor in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into tensors shaped and typed like ``like``."""
    pieces, offset = [], 0
    for reference in like:
        count = reference.numel()
        pieces.append(vector[offset : offset + count].view_as(reference).to(reference.dtype))
        offset += count
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries but the parameters have {offset}")
    return pieces


def rademacher(
    dimension: int, generator: torch.Generator, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return a flat vector of independent ±1 entries drawn from ``generator``."""
    signs = torch.randint(0, 2, (dimension,), generator=generator, device=generator.device)
    return (signs.to(dtype) * 2 - 1).to(device)


def gaussian(
    dimension: int, generator: torch.Generator, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return a flat standard normal vector drawn from ``generator`` (drawn in fp32, then cast)."""
    return torch.randn(dimension, generator=generator, device=generator.device).to(device, dtype)


# ----------------------------------------------------------------------------- the operator
class HessianOperator:
    """The Hessian of ``loss_fn`` at the model's current parameters, applied to flat vectors.

    Construct it inside :func:`probe_mode` (or use :func:`hessian_operator`). Construction
    runs one forward and one backward pass with ``create_graph=True`` and keeps only the
    parameters that receive a gradient. The first :meth:`matvec` reuses that graph. With
    ``reuse_graph`` the graph is kept, so each later product costs one further backward pass.
    Without it, each later product recomputes the loss and its gradient, which holds less
    memory between products.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, params: ParameterSpec = None, reuse_graph: bool = True):
        self.model = model
        self.loss_fn = loss_fn
        self.reuse_graph = reuse_graph
        candidates = candidate_parameters(model, params)
        loss = loss_fn(model)
        gradients = torch.autograd.grad(loss, [p for _, p in candidates], create_graph=True, allow_unused=True)
        self.params, gradients = keep_with_gradient(candidates, gradients)
        self.tensors = [parameter for _, parameter in self.params]
        self.loss = float(loss.detach())
        self.gradient = flatten([gradient.detach() for gradient in gradients])
        self._gradients: list[torch.Tensor] | None = list(gradients)
        self.dimension = sum(parameter.numel() for parameter in self.tensors)
        self.device = self.tensors[0].device
        self.dtype = self.gradient.dtype  # of the flat vectors: fp64 for fp64 models, else fp32
        self.n_products = 0

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.params]

    def _first_order(self) -> list[torch.Tensor]:
        if self._gradients is not None:
            gradients = self._gradients
            if not self.reuse_graph:
                self._gradients = None
            return gradients
        loss = self.loss_fn(self.model)
        return list(torch.autograd.grad(loss, self.tensors, create_graph=True, allow_unused=True, materialize_grads=True))

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """Return H·``vector`` as a flat vector (``vector`` is flat, over ``self.params``; see :func:`flatten`)."""
        if vector.shape != (self.dimension,):
            raise ValueError(f"vector has shape {tuple(vector.shape)}, expected ({self.dimension},)")
        gradients = self._first_order()
        pieces = unflatten(vector.to(self.device), self.tensors)
        # A gradient that does not require grad is constant in θ, so its rows of H are zero.
        pairs = [(gradient, piece) for gradient, piece in zip(gradients, pieces) if gradient.requires_grad]
        self.n_products += 1
        if not pairs:
            return torch.zeros(self.dimension, dtype=self.dtype, device=self.device)
        products = torch.autograd.grad(
            [gradient for gradient, _ in pairs],
            self.tensors,
            grad_outputs=[piece for _, piece in pairs],
            retain_graph=self.reuse_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return flatten(products)

    def release(self) -> None:
        """Free the kept first-order graph."""
        self._gradients = None


@contextlib.contextmanager
def hessian_operator(
    model: nn.Module, loss_fn: LossFn, params: ParameterSpec = None, reuse_graph: bool = True
) -> Iterator[HessianOperator]:
    """Yield a :class:`HessianOperator` with the model in :func:`probe_mode`; restore and free on exit."""
    with probe_mode(model):
        operator = HessianOperator(model, loss_fn, params, reuse_graph=reuse_graph)
        try:
            yield operator
        finally:
            operator.release()


def hessian_vector_product(
    model: nn.Module, loss_fn: LossFn, vector: Sequence[torch.Tensor], params: ParameterSpec = None
) -> list[torch.Tensor]:
    """Return H·v for ``vector`` given per parameter (shaped like the selected parameters).

    ``vector`` must match the parameters that :func:`select_parameters` keeps for the same
    ``params``, in the same order. The model is in :func:`probe_mode` during the product.
    """
    with hessian_operator(model, loss_fn, params, reuse_graph=False) as operator:
        if len(vector) != len(operator.tensors):
            raise ValueError(
                f"got {len(vector)} vector pieces for {len(operator.tensors)} parameters that receive a gradient"
            )
        product = operator.matvec(flatten(vector))
        return unflatten(product, operator.tensors)
