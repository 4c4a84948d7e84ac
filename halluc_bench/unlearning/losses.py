"""Unlearning objectives as plain functions of log-probabilities, always computed in float32.

Notation: the forget set holds the tokens of hallucinated object mentions, the retain set the
faithful caption tokens, ``pi_ref`` the frozen model before unlearning and log pi(y|x) the
summed token log-probability of a row's labelled tokens. Each function returns a scalar to
minimise. Rows or batches with no labelled token contribute 0 instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from halluc_bench.models.vlm import IGNORE_INDEX, TokenBatch, token_log_probs


# ----------------------------------------------------------------- model outputs
def model_logits(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Return the logits of ``batch``, shape (batch, seq, vocab), in the model's dtype."""
    return model(**batch.model_inputs()).logits


def policy_token_log_probs(model: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Return fp32 next-token log-probabilities of the labelled tokens and their mask, both (batch, seq - 1)."""
    return token_log_probs(model_logits(model, batch), batch.labels)


# ----------------------------------------------------------------- reductions
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask``; 0 (still attached to the graph) when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def mean_nll(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-averaged negative log-likelihood over every labelled token of the batch."""
    return -masked_mean(token_logp, mask)


def sequence_log_probs(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens, shape (batch,)."""
    return (token_logp * mask).sum(dim=-1)


def row_has_labels(mask: torch.Tensor) -> torch.Tensor:
    return mask.any(dim=-1)


# ----------------------------------------------------------------- objectives
def gradient_ascent_loss(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GA: -NLL_f, the mean log-probability of the forget tokens; minimising it makes them unlikely."""
    return masked_mean(token_logp, mask)


def npo_loss(policy_logp: torch.Tensor, reference_logp: torch.Tensor, beta: float, rows: torch.Tensor) -> torch.Tensor:
    """NPO forget term: -(2/beta) * mean log sigmoid(-beta * (log pi_theta - log pi_ref)).

    ``policy_logp`` and ``reference_logp`` are summed sequence log-probabilities (batch,);
    ``rows`` marks the rows that have forget tokens. At pi_theta = pi_ref it equals
    (2/beta) * ln 2. Written with softplus, which is the same function without underflow.
    """
    log_ratio = policy_logp.float() - reference_logp.float()
    per_row = F.softplus(beta * log_ratio) * (2.0 / beta)
    return masked_mean(per_row, rows)


def simnpo_loss(token_logp: torch.Tensor, mask: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO forget term: -(2/beta) * mean log sigmoid(beta * NLL/|y| - delta), without a reference.

    NLL/|y| is each row's length-normalised NLL over its forget tokens.
    """
    lengths = mask.sum(dim=-1).clamp_min(1).float()
    normalised_nll = -sequence_log_probs(token_logp, mask) / lengths  # (batch,)
    per_row = F.softplus(-(beta * normalised_nll - delta)) * (2.0 / beta)
    return masked_mean(per_row, row_has_labels(mask))


def dpo_loss(
    policy_chosen: torch.Tensor,
    reference_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO: -mean log sigmoid(beta * [(log pi - log pi_ref)(y_w) - (log pi - log pi_ref)(y_l)]).

    All inputs are summed sequence log-probabilities (batch,). The loss is ln 2 at
    pi_theta = pi_ref. NOTE: the NPO-style prefactor 2/beta is left out, so this is the
    standard DPO scale; the prefactor would only rescale gradients, like a learning-rate change.
    """
    margin = (policy_chosen.float() - reference_chosen.float()) - (policy_rejected.float() - reference_rejected.float())
    return F.softplus(-beta * margin).mean()


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi_theta) over the whole vocabulary, averaged over the labelled next-token positions.

    ``logits`` and ``reference_logits`` are (batch, seq, vocab) and cast to fp32; ``labels``
    (batch, seq) is unshifted like the model inputs.
    """
    mask = labels[:, 1:] != IGNORE_INDEX  # (batch, seq - 1)
    log_policy = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    log_reference = torch.log_softmax(reference_logits[:, :-1, :].float(), dim=-1)
    per_token = (log_reference.exp() * (log_reference - log_policy)).sum(dim=-1)  # (batch, seq - 1)
    return masked_mean(per_token, mask)


def weighted_gradient_ascent_loss(token_logp: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Span-weighted GA: sum(w * log p) / number of weighted tokens; ``weights`` is (batch, seq - 1), 0 off-span."""
    labelled = weights > 0
    return (token_logp * weights.float()).sum() / labelled.sum().clamp_min(1).float()

