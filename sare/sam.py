"""Targeted sharpness-aware minimisation (SAM) as a ``torch.optim.Optimizer`` wrapper.

Plain SAM (Foret et al., ICLR 2021) minimises max_{||eps|| <= rho} L(theta + eps) with a
first-order step: eps = rho * g / ||g|| for g = grad L(theta), then the update uses the
gradient taken at theta + eps. The *targeted* variant used for unlearning splits the
objective: only the forget loss L_h drives and feels the perturbation, the retain loss is
differentiated at the unperturbed theta, and the perturbation can be limited to a subset of
the parameters (param groups with ``perturb=False`` are never moved). The adaptive variant
(ASAM, Kwon et al., ICML 2021) scales the perturbation elementwise by |theta|.

This module depends on torch alone, so any training loop can use it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


class TargetedSAM(torch.optim.Optimizer):
    """Wrap a base optimizer with a sharpness-aware perturbation of selected parameters.

    ``params`` are tensors or param-group dicts as for any optimizer; a group may set
    ``perturb=False`` (not moved by the perturbation) or its own ``rho``. ``base_optimizer`` is
    an optimizer class built over the same param groups with ``base_kwargs``. ``param_groups``
    are shared with the base optimizer, so learning-rate schedulers and gradient scalers work
    on this object. ``state`` stores each perturbed parameter's last perturbation under
    ``"epsilon"``; :meth:`state_dict` also carries the base optimizer's state.

    Use either ``step(closure)`` (plain SAM on the closure's loss) or the explicit calls
    :meth:`perturb` / :meth:`reperturb`, :meth:`restore`, :meth:`step`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ):
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        defaults = dict(rho=float(rho), adaptive=bool(adaptive), perturb=True, **base_kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._originals: dict[torch.Tensor, torch.Tensor] = {}  # weights saved while perturbed
        self._perturbed = False
        self.last_grad_norm = 0.0  # norm of the (unscaled) gradient behind the last perturbation

    # ------------------------------------------------------------- perturbation
    def perturbed_parameters(self) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        for group in self.param_groups:
            if group.get("perturb", True) and group["rho"] > 0:
                for parameter in group["params"]:
                    yield parameter, group

    @property
    def is_perturbed(self) -> bool:
        return self._perturbed

    @property
    def has_epsilon(self) -> bool:
        """Whether a perturbation has been computed that :meth:`reperturb` can apply again."""
        return any("epsilon" in self.state[parameter] for parameter, _ in self.perturbed_parameters())

    @torch.no_grad()
    def perturb(self, grad_scale: float = 1.0) -> float:
        """Move the perturbed parameters to theta + eps, eps computed from their current ``.grad``.

        eps = rho * g / ||g|| with ||.|| the L2 norm over all perturbed parameters together,
        or eps = rho * theta^2 * g / ||theta * g|| when the group is adaptive. ``grad_scale``
        divides the gradients first (pass a loss scaler's current scale). A zero or
        non-finite gradient norm gives eps = 0. Returns the unscaled gradient norm.
        """
        if self._perturbed:
            raise RuntimeError("perturb() called twice without restore(); call restore() first")
        pieces = []
        for parameter, group in self.perturbed_parameters():
            if parameter.grad is None:
                continue
            scaled = parameter.grad.float() / grad_scale
            if group["adaptive"]:
                scaled = scaled * parameter.detach().float().abs()
            pieces.append(torch.linalg.vector_norm(scaled))
        norm = float(torch.linalg.vector_norm(torch.stack(pieces))) if pieces else 0.0
        self.last_grad_norm = norm
        usable = math.isfinite(norm) and norm > 0
        if not usable and norm != 0:
            logger.warning("gradient norm %s is not finite; this step is taken without perturbation", norm)
        for parameter, group in self.perturbed_parameters():
            state = self.state[parameter]
            if not usable or parameter.grad is None:
                state["epsilon"] = torch.zeros_like(parameter)
                continue
            direction = parameter.grad.float() / grad_scale
            if group["adaptive"]:
                direction = direction * parameter.detach().float().square()
            state["epsilon"] = (direction * (group["rho"] / norm)).to(parameter.dtype)
        self._apply_epsilon()
        return norm

    @torch.no_grad()
    def reperturb(self) -> None:
        """Move the perturbed parameters by the last perturbation again, without a new gradient."""
        if self._perturbed:
            raise RuntimeError("reperturb() called while already perturbed; call restore() first")
        if not self.has_epsilon:
            raise RuntimeError("reperturb() needs a perturbation from an earlier perturb() call")
        self._apply_epsilon()

    def _apply_epsilon(self) -> None:
        for parameter, _ in self.perturbed_parameters():
            epsilon = self.state[parameter].get("epsilon")
            if epsilon is None:
                continue
            saved = self._originals.get(parameter)
            if saved is None or saved.shape != parameter.shape or saved.dtype != parameter.dtype:
                saved = self._originals[parameter] = torch.empty_like(parameter)
            saved.copy_(parameter)
            parameter.add_(epsilon)
        self._perturbed = True

    @torch.no_grad()
    def restore(self) -> None:
        """Copy back the exact weights saved by :meth:`perturb` or :meth:`reperturb`."""
        if not self._perturbed:
            return
        for parameter, _ in self.perturbed_parameters():
            if "epsilon" in self.state[parameter]:
                parameter.copy_(self._originals[parameter])
        self._perturbed = False

    # ------------------------------------------------------------- torch.optim contract
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Apply the base optimizer to the current gradients.

        With a ``closure`` (which must zero the gradients, compute the loss, call backward and
        return the loss) this runs plain SAM: gradient at theta, perturb, gradient at
        theta + eps, restore, update. Returns the loss at theta.
        """
        if closure is None:
            if self._perturbed:
                raise RuntimeError("step() called while the weights are perturbed; call restore() first")
            self.base_optimizer.step()
            return None
        with torch.enable_grad():
            loss = closure()
        self.perturb()
        try:
            with torch.enable_grad():
                closure()
        finally:
            self.restore()
        self.base_optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        packed = super().state_dict()
        packed["base_optimizer"] = self.base_optimizer.state_dict()
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError("state_dict has no 'base_optimizer' entry; it was not saved by TargetedSAM.state_dict()")
        base_state = state_dict.pop("base_optimizer")
        self.base_optimizer.load_state_dict(base_state)
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        self._originals.clear()
        self._perturbed = False


# ----------------------------------------------------------------- the targeted step
@dataclass
class TargetedStepLosses:
    """Losses seen during one targeted step, detached."""

    forget_perturbed: torch.Tensor  # L_h(theta + eps)
    forget_unperturbed: torch.Tensor | None  # L_h(theta), only when eps was refreshed
    retain: torch.Tensor | None  # L_keep(theta)


def targeted_sam_step(
    optimizer: TargetedSAM,
    forget_closure: Callable[[], torch.Tensor],
    retain_closure: Callable[[], torch.Tensor | None] | None,
    *,
    refresh: bool = True,
    backward: Callable[[torch.Tensor], None] | None = None,
    grad_scale: float = 1.0,
    module: nn.Module | None = None,
) -> TargetedStepLosses:
    """Accumulate the targeted-SAM gradient grad L_h(theta + eps) + grad L_keep(theta) in ``.grad``.

    ``forget_closure`` returns L_h at the current weights and ``retain_closure`` the (already
    weighted) retain loss; neither calls backward. With ``refresh`` a new eps comes from
    grad L_h(theta), otherwise the last eps is reused and L_h(theta) is not computed. The
    weights are restored exactly before the retain pass and also when a closure raises.
    ``backward`` replaces ``Tensor.backward`` (a loss scaler's ``scale(loss).backward()``) and
    ``grad_scale`` is that scaler's factor. When ``module`` is given, its normalisation running
    statistics are kept from changing during the perturbed pass. The caller clips and then calls
    ``optimizer.step()`` (or ``scaler.step(optimizer)``).
    """
    run_backward = backward or (lambda loss: loss.backward())
    optimizer.zero_grad(set_to_none=True)
    unperturbed = None
    if refresh or not optimizer.has_epsilon:
        unperturbed = forget_closure()
        run_backward(unperturbed)
        optimizer.perturb(grad_scale=grad_scale)
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.reperturb()
    try:
        with preserved_running_stats(module):
            perturbed = forget_closure()
            run_backward(perturbed)
    finally:
        optimizer.restore()
    retain = retain_closure() if retain_closure is not None else None
    if retain is not None:
        run_backward(retain)
    return TargetedStepLosses(
        forget_perturbed=perturbed.detach(),
        forget_unperturbed=None if unperturbed is None else unperturbed.detach(),
        retain=None if retain is None else retain.detach(),
    )


@contextlib.contextmanager
def preserved_running_stats(module: nn.Module | None) -> Iterator[None]:
    """Restore every normalisation layer's running statistics on exit (no-op for None)."""
    if module is None:
        yield
        return
    saved = []
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._NormBase) and layer.track_running_stats:
            buffers = {name: buffer.detach().clone() for name, buffer in layer.named_buffers(recurse=False) if buffer is not None}
            saved.append((layer, buffers))
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, buffers in saved:
                for name, value in buffers.items():
                    getattr(layer, name).copy_(value)
