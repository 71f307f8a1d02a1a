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

from mtrl.aggregators.tools import geometric

GradientAndHessian = Callable[[Tensor], tuple[Tensor, Tensor]]
Value = Callable[[Tensor], Tensor]

# The line search tries the Newton step times 1, ½, ..., 2⁻¹⁵ (longest first), and 0, which
# keeps the point.
HALVINGS = 16


def minimize_on_simplex(
    value: Value,
    gradient_and_hessian: GradientAndHessian,
    size: int,
    *,
    like: Tensor,
    steps: int = 50,
    barrier_start: float = 1.0,
    barrier_end: float = 1e-12,
    active: Tensor | None = None,
) -> Tensor:
    """``argmin_{w∈Δ} f(w)`` given ``f`` on a batch of points ``[..., K] -> [...]`` and
    ``w ↦ (∇f(w), ∇²f(w))``, on the device and dtype of ``like``.

    Each step takes one damped Newton step on ``f(w) − μ Σ log w_i`` subject to ``Σ w_i = 1``
    and then shrinks ``μ`` geometrically from ``barrier_start`` to ``barrier_end``; the final
    point is within about ``K · barrier_end`` of the optimum for well-scaled ``f``. The step
    length is the best of the fractions ``1, ½, ..., 2⁻¹⁵, 0`` of the Newton step (cut to stay
    strictly inside the simplex): a full step overshoots where the curvature of ``f`` changes
    fast, as it does for ``‖g_w‖`` near zero when the gradients are linearly dependent.

    ``active`` (a boolean ``[K]`` mask, at least one true) restricts the problem to the face of
    the simplex where the other ``w_i`` are 0: the same solve as on those coordinates alone, in
    shapes that do not depend on how many there are.
    """
    # Every operation here is on a K-vector or a K×K matrix, so its cost is the dispatch of the
    # operation itself: inference mode skips autograd's share of it (a fifth on the CPU).
    with torch.inference_mode():
        w = _barrier_path(
            value, gradient_and_hessian, size, like, steps, barrier_start, barrier_end, active
        )
    return w.clone()  # an ordinary tensor again, usable anywhere


def _barrier_path(
    value, gradient_and_hessian, size, like, steps, barrier_start, barrier_end, active
):
    if active is None:
        inside = torch.ones(size, dtype=like.dtype, device=like.device)
    else:
        inside = active.to(like.dtype)
    count = inside.sum()
    w = inside / count
    # 0.99 of the way to the simplex's boundary at most, as a fraction of the Newton step
    fractions = 0.99 * torch.nn.functional.pad(geometric(HALVINGS, 0.5, like), (0, 1))
    fractions = fractions.unsqueeze(1)
    tiny = torch.finfo(like.dtype).tiny
    for barrier in np.geomspace(barrier_start, barrier_end, steps).tolist():
        gradient, hessian = gradient_and_hessian(w)
        if active is None:
            inverse = w.reciprocal()
        else:
            # the inactive coordinates' rows become those of the identity, with a zero
            # right-hand side: they do not move, and the others solve their own system
            inverse = inside / torch.where(active, w, 1.0)
            gradient = gradient * inside
            hessian = hessian * torch.outer(inside, inside) + torch.diag(1 - inside)
        system = hessian + torch.diag(inverse.square().mul_(barrier))
        # The Newton step on {Σ w = 1} is M⁻¹(r − ν1) with ν such that it sums to zero: one
        # solve with two right-hand sides instead of the (K+1)×(K+1) KKT system.
        rhs = torch.stack((torch.sub(inverse.mul_(barrier), gradient), inside), dim=1)
        step, drift = torch.linalg.solve_ex(system, rhs).result.unbind(dim=1)
        direction = step - drift * (step.sum() / drift.sum())
        # rounding must not leave the simplex's plane
        direction -= inside * (direction.sum() / count)
        # the largest step that keeps every w_i > 0 (1e308 where w_i does not decrease)
        free = w if active is None else torch.where(active, w, torch.inf)
        room = (free / direction.neg().clamp_min(tiny)).min().clamp(max=1 / 0.99)
        points = torch.addcmul(w, fractions * room, direction)
        logs = (points if active is None else torch.where(active, points, 1.0)).log()
        merit = torch.sub(value(points), logs.sum(dim=-1), alpha=barrier)
        best = merit.nan_to_num(nan=torch.inf).argmin()
        w = points.index_select(0, best.view(1))[0]  # no host sync, unlike points[best]
    return w
