"""GradOPS: each task's gradient projected onto the orthogonal complement of the others' span.

Zhu et al., "Gradient Deconfliction via Orthogonal Projections onto Subspaces for Multi-task
Learning", WSDM 2025 (arXiv 2503.03438).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.tools import geometric

# Ridges tried, in units of the configured one, smallest first (see ridge_inverse): 1, 100,
# 1e4 and 1e6.
RIDGE_TRIES, RIDGE_GROWTH = 4, 100.0
# The least length of an α-weighted update, as a fraction of the plain update's.
KEPT_LENGTH = 0.25


def keep_length(gram: Tensor, weights: Tensor, plain: Tensor, fraction: float) -> Tensor:
    """The largest ``t ∈ [0, 1]`` with ``‖d(t)‖ ≥ fraction ‖d(plain)‖`` for the update
    ``d(t) = Jᵀ (t weights + (1 − t) plain)`` (``gram = J Jᵀ``), without a host sync.

    ``‖d(t)‖²`` is a quadratic ``A t² + B t + c`` with ``A = ‖d_w − d_p‖² ≥ 0``: where it ends
    below the floor at t = 1, it crosses it once in (0, 1), at the smaller root.
    """
    a, b, c = weights @ gram @ weights, weights @ gram @ plain, plain @ gram @ plain
    floor = fraction**2 * c
    quadratic, linear, constant = a - 2 * b + c, 2 * (b - c), c - floor
    discriminant = (linear.square() - 4 * quadratic * constant).clamp_min(0)
    # the smaller root, in the form that keeps its digits when the quadratic term is small
    root = 2 * constant / (-linear + discriminant.sqrt()).clamp_min(torch.finfo(c.dtype).tiny)
    return torch.where(a >= floor, torch.ones_like(a), root.clamp(0, 1))


def ridge_inverse(cosines: Tensor, ridge: float) -> Tensor:
    """``(C + εI)⁻¹`` for the float64 cosine matrix ``C``, with the smallest ``ε`` of
    ``ridge`` × ``1, 100, 1e4, 1e6`` for which ``C + εI`` has a Cholesky factor.

    ``C`` is positive semi-definite in exact arithmetic, but a Gram matrix summed in float32
    can have eigenvalues slightly below zero when the gradients are (nearly) linearly dependent;
    a larger ridge then restores definiteness. All the factorisations run as one batch and the
    choice is made on the device: unlike an eigendecomposition, whose error check makes a CUDA
    device wait for the host, nothing here waits.
    """
    size = cosines.shape[0]
    eye = torch.eye(size, dtype=cosines.dtype, device=cosines.device)
    ridges = geometric(RIDGE_TRIES, RIDGE_GROWTH, cosines) * ridge
    factors, info = torch.linalg.cholesky_ex(cosines + ridges[:, None, None] * eye)
    first = (info == 0).to(torch.int32).argmax()  # argmax gives the first of equal maxima
    factor = factors.index_select(0, first.view(1))[0]
    factor_inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
    return factor_inverse.T @ factor_inverse


@dataclasses.dataclass
class GradOPS(Aggregator):
    """``g'_i = g_i − Proj_{span{g_j : j≠i}}(g_i)``, update ``Σ_i w_i g'_i``.

    Every ``g'_i`` is orthogonal to every other task's gradient, so for any ``w ≥ 0`` the update
    has a non-negative inner product with every original task gradient, for any K.

    With ``G_ε = G + εI`` the projection residuals are ``g'_i = Jᵀ G_ε⁻¹ e_i / (G_ε⁻¹)_ii``: the
    ridge ``ε`` turns each leave-one-out least-squares fit into ridge regression, which tends to
    the pseudo-inverse fit as ``ε → 0`` and gives a gradient inside the others' span a zero
    residual instead of a blow-up.

    The trade-off ``α < 0`` can collapse the update: a task whose gradient lies nearly in the
    others' span has ``R_i → 0``, takes almost all the weight, and its residual ``g'_i`` is
    tiny (K = 10 random gradients with one pair at cosine 0.995: ``‖d‖`` falls to 3% of the
    plain update's). So the α-weights are blended towards the plain ones, ``w = t w_α +
    (1 − t) 1`` with the largest ``t ∈ [0, 1]`` for which ``‖d‖ ≥ ¼ ‖d_plain‖`` (a quadratic
    in t, solved on the device); any ``w ≥ 0`` keeps every guarantee above. The paper's exact
    ``R_i`` could not be checked.

    Args:
        alpha: trade-off exponent. ``w_i = K R_i^α / Σ_j R_j^α`` with
            ``R_i = cos(g_i, Σ_j g'_j)``; 0 is plain GradOPS (``w_i = 1``), α < 0 favours the tasks
            that the plain update helps least (the paper reports α = −3), and α > 0 those it
            helps most. Either way the update keeps at least a quarter of the plain one's length.
        ridge: ``ε`` added to the Gram matrix of the unit-normalised gradients (raised 100-fold
            at a time while rounding leaves that matrix indefinite, see :func:`ridge_inverse`).
        eps: floor on ``R_i`` so that ``R_i^α`` stays finite for α < 0.
    """

    name = "gradops"

    scale_invariant = True

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
        # ‖d(w)‖² = wᵀ Cᵀ G C w for d(w) = Σ_i w_i g'_i: blend towards w = 1 where d shrinks
        projected = coefficients.T @ g @ coefficients
        ones = torch.ones_like(task_weights)
        t = keep_length(projected, task_weights, ones, KEPT_LENGTH)
        blended = t * task_weights + (1 - t) * ones
        return (coefficients @ blended).to(gram.dtype)
