"""GradOPS: each task's gradient projected onto the orthogonal complement of the others' span.

Zhu et al., "Gradient Deconfliction via Orthogonal Projections onto Subspaces for Multi-task
Learning", WSDM 2025 (arXiv 2503.03438).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram, register


@register("gradops")
@dataclasses.dataclass
class GradOPS(Aggregator):
    """``g'_i = g_i − Proj_{span{g_j : j≠i}}(g_i)``, update ``Σ_i w_i g'_i``.

    Every ``g'_i`` is orthogonal to every other task's gradient, so for any ``w ≥ 0`` the update
    has a non-negative inner product with every original task gradient, for any K.

    With ``G_ε = G + εI`` the projection residuals are ``g'_i = Jᵀ G_ε⁻¹ e_i / (G_ε⁻¹)_ii``: the
    ridge ``ε`` turns each leave-one-out least-squares fit into ridge regression, which tends to
    the pseudo-inverse fit as ``ε → 0`` and gives a gradient inside the others' span a zero
    residual instead of a blow-up.

    Args:
        alpha: trade-off exponent. ``w_i = K R_i^α / Σ_j R_j^α`` with
            ``R_i = cos(g_i, Σ_j g'_j)``; 0 is plain GradOPS (``w_i = 1``), α < 0 favours the tasks
            that the plain update helps least (the paper reports α = −3).
        ridge: ``ε`` added to the Gram matrix of the unit-normalised gradients.
        eps: floor on ``R_i`` so that ``R_i^α`` stays finite for α < 0.
    """

    alpha: float = 0.0
    ridge: float = 1e-7
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha):
            raise ValueError(f"gradops: alpha must be a finite number, got {self.alpha}")
        if not 0 < self.ridge < 1:
            raise ValueError(f"gradops: ridge must be in (0, 1), got {self.ridge}")
        if not 0 < self.eps < 1:
            raise ValueError(f"gradops: eps must be in (0, 1), got {self.eps}")

    def projection_coefficients(self, gram: Tensor) -> Tensor:
        """``C`` of shape ``[K, K]`` (float64) whose column i gives ``g'_i = Jᵀ C[:, i]``."""
        gram = gram.to(torch.float64)
        norms = gram.diagonal().clamp_min(0).sqrt()
        # The projections do not change when a gradient is rescaled, so solve on unit gradients:
        # the ridge then means the same for every task, however different their norms.
        inverse_norms = torch.where(norms > 0, 1 / norms, 0.0)
        cosines = gram * torch.outer(inverse_norms, inverse_norms)
        # eigh rather than Cholesky: a Gram matrix computed in float32 can be slightly
        # indefinite, and clamping its spectrum at zero keeps the inverse well defined.
        eigvals, eigvecs = torch.linalg.eigh(cosines)
        inverse = (eigvecs / (eigvals.clamp_min(0) + self.ridge)) @ eigvecs.T
        unit_coefficients = inverse / inverse.diagonal()
        return inverse_norms[:, None] * unit_coefficients * norms

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        coefficients = self.projection_coefficients(gram)
        plain = coefficients.sum(dim=1)
        if self.alpha == 0:
            return plain.to(gram.dtype)
        g = normalized_gram(gram)
        benefit = g @ plain  # g_i · Σ_j g'_j
        norms = (g.diagonal().clamp_min(0) * (plain @ benefit).clamp_min(0)).sqrt()
        cosine = (benefit / norms.clamp_min(torch.finfo(g.dtype).tiny)).clamp(self.eps, 1.0)
        task_weights = cosine.pow(self.alpha)
        task_weights = len(task_weights) * task_weights / task_weights.sum()
        return (coefficients @ task_weights).to(gram.dtype)
