"""The categorical critic's distributional TD target and loss, as BRC computes them (Nauman et al.,
"Bigger, Regularized, Categorical", 2025; naumix/BiggerRegularizedCategorical,
``jaxrl/agent/update.py``: ``update_critic`` and ``update_actor``).

Each critic predicts logits over a fixed support of ``atoms`` values evenly spaced on
``[−v_max, v_max]``. The target distribution is the mean of the target critics' probabilities
(no minimum over the twin critics), each atom moved to ``r + γ (1 − done) (z − α log π)``,
clipped to the support and split between its two neighbouring atoms. Losses come back one per
task (``[K]``), so that every method combines the critic's task gradients as for the squared TD
error.
"""

from __future__ import annotations

import torch
from torch import Tensor


def support(atoms: int, v_max: float, *, device=None, dtype=None) -> Tensor:
    """The values of the atoms: ``atoms`` points evenly spaced on ``[−v_max, v_max]``."""
    if atoms < 2:
        raise ValueError(f"a categorical critic needs at least 2 atoms, got {atoms}")
    if not v_max > 0:
        raise ValueError(f"v_max must be positive, got {v_max}")
    return torch.linspace(-v_max, v_max, atoms, device=device, dtype=dtype)


def mean_probabilities(logits: Tensor) -> Tensor:
    """The ensemble's mean distribution ``[..., atoms]`` from the critics' logits
    ``[critics, ..., atoms]``."""
    return torch.softmax(logits, dim=-1).mean(dim=0)


def expectation(logits: Tensor, atoms: Tensor) -> Tensor:
    """The value the actor maximises: the expectation over the support of the ensemble-mean
    probabilities, ``[...]`` from logits ``[critics, ..., atoms]``."""
    return (mean_probabilities(logits) * atoms).sum(dim=-1)


def project(
    probs: Tensor,
    rewards: Tensor,
    dones: Tensor,
    discount: float,
    entropy: Tensor,
    atoms: Tensor,
) -> Tensor:
    """The target distribution ``[..., atoms]``: the mass ``probs[..., j]`` of atom ``z_j`` moved
    to ``r + discount (1 − done) (z_j − entropy)``, clipped to the support and split between the
    atoms below and above it in proportion to its distance from each (all of it to the atom it
    falls on exactly).

    ``rewards``, ``dones`` and ``entropy`` (the temperature times the next action's
    log-probability) are ``[...]``.
    """
    count = atoms.shape[0]
    v_min, v_max = atoms[0], atoms[-1]
    spacing = (v_max - v_min) / (count - 1)
    moved = rewards.unsqueeze(-1) + discount * (1 - dones).unsqueeze(-1) * (
        atoms - entropy.unsqueeze(-1)
    )
    # The position on the support in units of atoms; clamped again since rounding in the
    # division can step past either end by a hair.
    position = ((moved.clamp(v_min, v_max) - v_min) / spacing).clamp(0, count - 1)
    lower, upper = position.floor(), position.ceil()
    exact = (lower == upper).to(probs.dtype)
    to_lower = probs * (upper - position + exact)
    to_upper = probs * (position - lower)
    target = torch.zeros_like(probs)
    target.scatter_add_(-1, lower.long(), to_lower)
    target.scatter_add_(-1, upper.long(), to_upper)
    return target


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Each critic's cross-entropy with the target distribution, row by row: ``[critics, ...]``
    from logits ``[critics, ..., atoms]`` and a target ``[..., atoms]``."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def cross_entropy_task_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The cross-entropy of each critic's prediction with the target distribution, averaged over
    the batch and summed over the critics: ``[K]`` from logits ``[critics, K, B, atoms]`` and a
    target ``[K, B, atoms]`` (or a scalar from one task's ``[critics, B, atoms]`` and
    ``[B, atoms]``)."""
    return cross_entropy(logits, target).mean(dim=-1).sum(dim=0)
