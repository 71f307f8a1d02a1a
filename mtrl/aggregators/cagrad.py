"""CAGrad: the update that maximises the worst task improvement near the average gradient.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram, register
from mtrl.aggregators.simplex import minimize_on_simplex

RESCALES = (0, 1, 2)


@register("cagrad")
@dataclasses.dataclass
class CAGrad(Aggregator):
    """``max_d min_i ⟨g_i, d⟩`` subject to ``‖d − g0‖ ≤ c‖g0‖``, solved through its dual
    ``w* = argmin_{w∈Δ} g_wᵀg0 + c‖g0‖‖g_w‖`` and ``d = g0 + c‖g0‖ g_w* / ‖g_w*‖``.

    The dual is solved exactly (to the tolerance ``smoothing``) by a Newton barrier method
    instead of the original code's 20 SGD steps on softmax logits.

    Args:
        c: radius of the ball around the mean gradient, in [0, 1); 0 is plain averaging.
            The MT10 and MT50 papers use 0.9 and 0.5.
        rescale: 0 leaves ``d`` as is, 1 divides it by ``1 + c²`` (the default), 2 by ``1 + c``.
        smoothing: ``‖g_w‖`` is computed as ``sqrt(‖g_w‖² + smoothing²)`` relative to the mean
            gradient norm, which bounds the dual's curvature where ``g_w`` vanishes.
    """

    c: float = 0.9
    rescale: int = 1
    smoothing: float = 1e-6

    def __post_init__(self) -> None:
        if not 0 <= self.c < 1:
            raise ValueError(f"cagrad: c must be in [0, 1), got {self.c}")
        if self.rescale not in RESCALES:
            raise ValueError(f"cagrad: rescale must be one of {RESCALES}, got {self.rescale}")
        if not 0 < self.smoothing < 1:
            raise ValueError(f"cagrad: smoothing must be in (0, 1), got {self.smoothing}")

    def dual_objective(self, gram: Tensor, w: Tensor) -> Tensor:
        """``g_wᵀg0 + c‖g0‖‖g_w‖`` for the (normalised, float64) Gram matrix ``gram``; ``w`` may
        carry leading batch dimensions."""
        mean = torch.full(
            (gram.shape[0],), 1.0 / gram.shape[0], dtype=gram.dtype, device=gram.device
        )
        radius = self.c * (mean @ gram @ mean).clamp_min(0).sqrt()
        gw = w @ gram
        return gw @ mean + radius * (gw * w).sum(dim=-1).clamp_min(0).sqrt()

    def solve_dual(self, gram: Tensor) -> Tensor:
        """``w*`` for the normalised float64 Gram matrix ``gram``."""
        size = gram.shape[0]
        mean = torch.full((size,), 1.0 / size, dtype=gram.dtype, device=gram.device)
        linear = gram @ mean
        radius = self.c * (mean @ linear).clamp_min(0).sqrt()
        floor = self.smoothing**2

        def gradient_and_hessian(w: Tensor) -> tuple[Tensor, Tensor]:
            gw = gram @ w
            norm = ((w @ gw).clamp_min(0) + floor).sqrt()
            gradient = linear + radius * gw / norm
            hessian = radius * (gram / norm - torch.outer(gw, gw) / norm**3)
            return gradient, hessian

        return minimize_on_simplex(gradient_and_hessian, size, like=gram)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        size = gram.shape[0]
        g = normalized_gram(gram)
        mean = torch.full((size,), 1.0 / size, dtype=g.dtype, device=g.device)
        if self.c == 0:
            return mean.to(gram.dtype)
        w = self.solve_dual(g)
        radius = self.c * (mean @ g @ mean).clamp_min(0).sqrt()
        norm = ((w @ g @ w).clamp_min(0) + self.smoothing**2).sqrt()
        update = mean + radius * w / norm
        update = update / (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        return update.to(gram.dtype)
