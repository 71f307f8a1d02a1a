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

# Ridges tried, in units of the configured one, smallest first (see ridge_inverse).
RIDGE_STEPS = (1.0, 1e2, 1e4, 1e6)


def ridge_inverse(cosines: Tensor, ridge: float) -> Tensor:
    """``(C + εI)⁻¹`` for the float64 cosine matrix ``C``, with the smallest ``ε`` of
    ``ridge`` × :data:`RIDGE_STEPS` for which ``C + εI`` has a Cholesky factor.

    ``C`` is positive semi-definite in exact arithmetic, but a Gram matrix summed in float32
    can have eigenvalues slightly below zero when the gradients are (nearly) linearly dependent;
    a larger ridge then restores definiteness. All the factorisations run as one batch and the
    choice is made on the device: unlike an eigendecomposition, whose error check makes a CUDA
    device wait for the host, nothing here waits.
    """
    size = cosines.shape[0]
    eye = torch.eye(size, dtype=cosines.dtype, device=cosines.device)
    ridges = torch.tensor(RIDGE_STEPS, dtype=cosines.dtype, device=cosines.device) * ridge
    factors, info = torch.linalg.cholesky_ex(cosines + ridges[:, None, None] * eye)
    first = (info == 0).to(torch.int32).argmax()  # argmax gives the first of equal maxima
    factor = factors.index_select(0, first.view(1))[0]
    factor_inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    return factor_inverse.T @ factor_inverse


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
        ridge: ``ε`` added to the Gram matrix of the unit-normalised gradients (raised 100-fold
            at a time while rounding leaves that matrix indefinite, see :func:`ridge_inverse`).
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
        inverse = ridge_inverse(cosines, self.ridge)
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
