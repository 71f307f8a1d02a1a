"""ConicGrad: the best worst-case update within a cone around the average gradient.

Hassanpour et al., "Fantastic Multi-Task Gradient Updates and How to Find Them In a Cone",
2025 (arXiv 2502.00217).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.mgda import min_norm_weights
from mtrl.aggregators.simplex import minimize_on_simplex
from mtrl.aggregators.tools import safe_divide, uniform


def cancels_out(gram: Tensor, weights: Tensor, dtype: torch.dtype) -> Tensor:
    """Whether the gradients combined by ``weights`` cancel out (a Pareto-stationary point):
    the combination is shorter than ``τ`` times the weighted sum of their lengths, ``τ`` the
    noise of that cancellation (the barrier solve stops about 1e-6 short, and a float32 Gram
    matrix rounds at about 3e-4 of the lengths)."""
    combined = (weights @ gram @ weights).clamp_min(0).sqrt()
    lengths = weights @ gram.diagonal().clamp_min(0).sqrt()
    return combined <= max(1e-5, 10 * math.sqrt(torch.finfo(dtype).eps)) * lengths


@dataclasses.dataclass
class ConicGrad(Aggregator):
    """``max_d min_i ⟨g_i, d⟩`` subject to ``cos(d, g0) ≥ c`` and ``‖d‖ = ‖g0‖``.

    The angular constraint alone is scale-free (a feasible d can be stretched without bound),
    so the update is given the mean gradient's length; the paper's own normalisation could not
    be checked. With ``u = g0/‖g0‖`` and ``s = √(1 − c²)``, the best ``⟨v, d⟩`` over that
    spherical cap is ``‖g0‖ h(v)``: ``h(v) = ‖v‖`` if ``cos(v, u) ≥ c``, else
    ``c uᵀv + s‖v − (uᵀv)u‖``. ``h`` is convex (the support function of the cap's hull), and
    the dual is ``w* = argmin_{w∈Δ} h(g_w)``, K-dimensional and Gram-expressible. Its
    optimality conditions make ``d = ‖g0‖ ∇h(g_w*)`` primal optimal, with
    ``min_i ⟨g_i, d⟩ = ‖g0‖ h(g_w*)``. When MGDA's point lies inside the cone, ``w*`` is
    MGDA's and ``d`` its direction. Otherwise ``d`` is on the cone's edge, a positive
    combination of ``g_w*`` and ``g0``, and ``w*`` minimises the smooth
    ``c uᵀg_w + s‖g_w − (uᵀg_w)u‖`` (see :meth:`_solve`). ``c = 0`` gives MGDA's direction
    and ``c = 1`` the mean.

    At a numerically Pareto-stationary point (MGDA's min-norm point of the gradients below
    the rounding of their Gram matrix, e.g. when two tasks pull exactly against each other),
    no direction improves every task, and the update is zero.

    Args:
        c: the least cosine between the update and the mean gradient, in [0, 1] (the paper's
            Meta-World value could not be checked; 0.5 is a cone of 60°).
        smoothing: the norms inside ``h`` are computed as ``sqrt(x² + smoothing²)`` relative to
            the mean gradient norm, which bounds the dual's curvature where they vanish.
    """

    name = "conicgrad"

    scale_invariant = True

    c: float = 0.5
    smoothing: float = 1e-6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.c) and 0 <= self.c <= 1):
            raise ValueError(f"{self.name}: c must be in [0, 1], got {self.c}")
        if not 0 < self.smoothing < 1:
            raise ValueError(f"{self.name}: smoothing must be in (0, 1), got {self.smoothing}")

    def _pieces(self, gram: Tensor, w: Tensor) -> tuple[Tensor, ...]:
        """``‖g0‖``, ``p`` (``p_i = g_i·u``), ``uᵀg_w``, ``‖g_w‖²`` and whether ``g_w`` is in
        the cone; ``w`` may carry leading batch dimensions."""
        mean = uniform(gram.shape[0], gram)
        length = (mean @ gram @ mean).clamp_min(0).sqrt()
        along = safe_divide(gram @ mean, length)
        gw = w @ gram
        along_w = w @ along
        squared = (gw * w).sum(dim=-1).clamp_min(0)
        inside = along_w >= self.c * squared.sqrt()
        return length, along, along_w, squared, inside

    def dual_objective(self, gram: Tensor, w: Tensor) -> Tensor:
        """``‖g0‖ h(g_w)`` (no smoothing) for the normalised float64 ``gram``: the dual value,
        equal at the optimum to ``min_i ⟨g_i, d⟩``. ``w`` may carry leading batch dimensions."""
        length, _, along_w, squared, inside = self._pieces(gram, w)
        sine = math.sqrt(1 - self.c**2)
        edge = self.c * along_w + sine * (squared - along_w.square()).clamp_min(0).sqrt()
        return length * torch.where(inside, squared.sqrt(), edge)

    def _solve(self, gram: Tensor) -> tuple[Tensor, Tensor]:
        """``w*`` and whether ``g_w*`` lies inside the cone, for the normalised float64 gram.

        ``h(v) = max_{t∈[c,1]} t uᵀv + √(1−t²) ‖v − (uᵀv)u‖``, so ``min_w h = max_t ψ(t)``
        with ``ψ`` concave. Over ``t ∈ [0, 1]`` the optimum is MGDA's point at
        ``t = cos(g_MGDA, g0) ≥ 0`` (``g_w·g_MGDA ≥ ‖g_MGDA‖²`` bounds ``h`` below), so: MGDA
        if that cosine is at least c, else ``t* = c`` and the smooth convex
        ``min_w c uᵀg_w + s ‖g_w − (uᵀg_w) u‖``. Both are solved; one is selected on the device.
        """
        size = gram.shape[0]
        mean = uniform(size, gram)
        length = (mean @ gram @ mean).clamp_min(0).sqrt()
        along = safe_divide(gram @ mean, length)  # g_i · u
        mgda = min_norm_weights(gram)
        mgda_norm = (mgda @ gram @ mgda).clamp_min(0).sqrt()
        inside = safe_divide(along @ mgda, mgda_norm) >= self.c

        c, sine, floor = self.c, math.sqrt(1 - self.c**2), self.smoothing**2
        across_gram = gram - torch.outer(along, along)  # Gram of the parts orthogonal to u

        def value(w: Tensor) -> Tensor:
            across = ((w @ across_gram) * w).sum(dim=-1).clamp_min(0)
            return c * (w @ along) + sine * (across + floor).sqrt()

        def gradient_and_hessian(w: Tensor) -> tuple[Tensor, Tensor]:
            across = across_gram @ w
            norm = ((w @ across).clamp_min(0) + floor).sqrt()
            gradient = c * along + sine * across / norm
            hessian = sine * (across_gram / norm - torch.outer(across, across) / norm**3)
            return gradient, hessian

        edge = minimize_on_simplex(value, gradient_and_hessian, size, like=gram)
        return torch.where(inside, mgda, edge), inside

    def solve_dual(self, gram: Tensor) -> Tensor:
        """``w* = argmin_{w∈Δ} h(g_w)`` for the normalised float64 ``gram``."""
        return self._solve(gram)[0]

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        g = normalized_gram(gram)
        size = g.shape[0]
        mean = uniform(size, g)
        w, inside = self._solve(g)
        # At a (numerically) Pareto-stationary point MGDA's point is noise, and both the
        # inside-the-cone test and the direction would divide noise by noise: then no direction
        # improves every task, and the best worst case, 0, is the zero update.
        stationary = cancels_out(g, min_norm_weights(g), gram.dtype)
        length, _, along_w, squared, _ = self._pieces(g, w)
        floor = self.smoothing**2
        # d ∝ ∇h(g_w*) of the smoothed h that was minimised, so that the optimality conditions
        # of the solve carry over to d; then d is given the length ‖g0‖.
        # inside: d ∝ g_w / ‖g_w‖
        inner = w / (squared + floor).sqrt()
        # outside: d ∝ c u + s (g_w − (uᵀg_w) u) / ‖…‖, with u = Jᵀ mean / ‖g0‖
        across_norm = ((squared - along_w.square()).clamp_min(0) + floor).sqrt()
        sine = math.sqrt(1 - self.c**2)
        edge = self.c * mean + sine * (length * w - along_w * mean) / across_norm
        direction = torch.where(inside, inner, edge)
        norm = (direction @ g @ direction).clamp_min(0).sqrt()
        scaled = direction * safe_divide(length, norm)
        return torch.where(stationary, 0.0, scaled).to(gram.dtype)
