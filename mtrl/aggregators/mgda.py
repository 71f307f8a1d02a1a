"""MGDA: the minimum-norm point of the convex hull of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.simplex import minimize_on_simplex


def min_norm_weights(
    gram: Tensor, shift: Tensor | None = None, active: Tensor | None = None
) -> Tensor:
    """``argmin_{w∈Δ} ½‖Jᵀ(w + s)‖²`` for a float64 Gram matrix ``G = J Jᵀ`` and fixed weights
    ``s`` (none: MGDA's min-norm point; ``λ/K``: SDMGrad's regularised one); with ``active`` (a
    boolean mask), over the weights that are 0 outside it."""
    offset = gram @ shift if shift is not None else torch.zeros_like(gram[0])

    def value(w: Tensor) -> Tensor:
        return 0.5 * ((w @ gram) * w).sum(dim=-1) + w @ offset

    def gradient_and_hessian(w: Tensor) -> tuple[Tensor, Tensor]:
        return gram @ w + offset, gram

    return minimize_on_simplex(value, gradient_and_hessian, gram.shape[0], like=gram, active=active)


@dataclasses.dataclass
class MGDA(Aggregator):
    """``w* = argmin_{w∈Δ} wᵀGw``, update ``Jᵀw*``: the shortest vector in the convex hull of
    the task gradients. If it is not zero, it has a positive inner product with every task
    gradient (``g_i·Jᵀw* ≥ ‖Jᵀw*‖²``); if it is zero, the point is Pareto-stationary.

    The quadratic program is solved by the on-device Newton barrier method of
    :mod:`mtrl.aggregators.simplex` instead of the paper's Frank–Wolfe iterations; the weights
    sum to 1 (some implementations scale them to sum to K). No hyperparameters.
    """

    name = "mgda"

    scale_invariant = True

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return min_norm_weights(normalized_gram(gram)).to(gram.dtype)
