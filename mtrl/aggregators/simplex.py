"""A small exact solver for convex problems over the probability simplex.

Several methods (CAGrad, MGDA, SDMGrad, ...) need ``argmin_{w∈Δ} f(w)`` for a smooth convex ``f``
on K ≤ a few hundred variables. A barrier path-following Newton method solves these to high
accuracy in a fixed number of steps, each one K×K linear solve and a line search over a
fixed set of step lengths. The fixed counts and the torch-only arithmetic keep the whole solve on
the device with no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

GradientAndHessian = Callable[[Tensor], tuple[Tensor, Tensor]]
Value = Callable[[Tensor], Tensor]

# Fractions of the Newton step tried by the line search, longest first; 0 keeps the point.
STEP_FRACTIONS = (*(2.0**-i for i in range(16)), 0.0)


def minimize_on_simplex(
    value: Value,
    gradient_and_hessian: GradientAndHessian,
    size: int,
    *,
    like: Tensor,
    steps: int = 50,
    barrier_start: float = 1.0,
    barrier_end: float = 1e-12,
) -> Tensor:
    """``argmin_{w∈Δ} f(w)`` given ``f`` on a batch of points ``[..., K] -> [...]`` and
    ``w ↦ (∇f(w), ∇²f(w))``, on the device and dtype of ``like``.

    Each step takes one damped Newton step on ``f(w) − μ Σ log w_i`` subject to ``Σ w_i = 1``
    and then shrinks ``μ`` geometrically from ``barrier_start`` to ``barrier_end``; the final
    point is within about ``K · barrier_end`` of the optimum for well-scaled ``f``. The step
    length is the best of :data:`STEP_FRACTIONS` of the Newton step (cut to stay strictly inside
    the simplex): a full step overshoots where the curvature of ``f`` changes fast, as it does
    for ``‖g_w‖`` near zero when the gradients are linearly dependent.
    """
    # Every operation here is on a K-vector or a K×K matrix, so its cost is the dispatch of the
    # operation itself: inference mode skips autograd's share of it (a fifth on the CPU).
    with torch.inference_mode():
        w = _barrier_path(
            value, gradient_and_hessian, size, like, steps, barrier_start, barrier_end
        )
    return w.clone()  # an ordinary tensor again, usable anywhere


def _barrier_path(value, gradient_and_hessian, size, like, steps, barrier_start, barrier_end):
    w = torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
    ones = torch.ones_like(w)
    # 0.99 of the way to the simplex's boundary at most, as a fraction of the Newton step
    fractions = 0.99 * torch.tensor(STEP_FRACTIONS, dtype=like.dtype, device=like.device)
    fractions = fractions.unsqueeze(1)
    tiny = torch.finfo(like.dtype).tiny
    for barrier in np.geomspace(barrier_start, barrier_end, steps).tolist():
        gradient, hessian = gradient_and_hessian(w)
        inverse = w.reciprocal()
        system = hessian + torch.diag(inverse.square().mul_(barrier))
        # The Newton step on {Σ w = 1} is M⁻¹(r − ν1) with ν such that it sums to zero: one
        # solve with two right-hand sides instead of the (K+1)×(K+1) KKT system.
        rhs = torch.stack((torch.sub(inverse.mul_(barrier), gradient), ones), dim=1)
        step, drift = torch.linalg.solve_ex(system, rhs).result.unbind(dim=1)
        direction = step - drift * (step.sum() / drift.sum())
        direction -= direction.mean()  # rounding must not leave the simplex's plane
        # the largest step that keeps every w_i > 0 (1e308 where w_i does not decrease)
        room = (w / direction.neg().clamp_min(tiny)).min().clamp(max=1 / 0.99)
        points = torch.addcmul(w, fractions * room, direction)
        merit = torch.sub(value(points), points.log().sum(dim=-1), alpha=barrier)
        best = merit.nan_to_num(nan=torch.inf).argmin()
        w = points.index_select(0, best.view(1))[0]  # no host sync, unlike points[best]
    return w
