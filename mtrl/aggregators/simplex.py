"""A small exact solver for convex problems over the probability simplex.

Several methods (CAGrad, MGDA, SDMGrad, ...) need ``argmin_{w∈Δ} f(w)`` for a smooth convex ``f``
on K ≤ a few hundred variables. A barrier path-following Newton method solves these to high
accuracy in a fixed number of steps, each one (K+1)×(K+1) linear solve. The fixed count and the
torch-only arithmetic keep the whole solve on the device with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

GradientAndHessian = Callable[[Tensor], tuple[Tensor, Tensor]]


def minimize_on_simplex(
    gradient_and_hessian: GradientAndHessian,
    size: int,
    *,
    like: Tensor,
    steps: int = 40,
    barrier_start: float = 1.0,
    barrier_end: float = 1e-12,
) -> Tensor:
    """``argmin_{w∈Δ} f(w)`` given ``w ↦ (∇f(w), ∇²f(w))``, on the device and dtype of ``like``.

    Each step takes one Newton step on ``f(w) − μ Σ log w_i`` subject to ``Σ w_i = 1`` and then
    shrinks ``μ`` geometrically from ``barrier_start`` to ``barrier_end``; the final point is
    within about ``K · barrier_end`` of the optimum for well-scaled ``f``. Steps are cut to stay
    strictly inside the simplex.
    """
    w = torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
    kkt = torch.zeros(size + 1, size + 1, dtype=like.dtype, device=like.device)
    kkt[:size, size] = 1.0
    kkt[size, :size] = 1.0
    rhs = torch.zeros(size + 1, dtype=like.dtype, device=like.device)
    inf = torch.full((), torch.inf, dtype=like.dtype, device=like.device)  # no host copy
    for barrier in np.geomspace(barrier_start, barrier_end, steps).tolist():
        gradient, hessian = gradient_and_hessian(w)
        kkt[:size, :size] = hessian + torch.diag(barrier / w.square())
        rhs[:size] = barrier / w - gradient
        direction = torch.linalg.solve_ex(kkt, rhs).result[:size]
        room = torch.where(direction < 0, -w / direction, inf).min()
        w = w + (0.99 * room).clamp(max=1.0) * direction
    return w
