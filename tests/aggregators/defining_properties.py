"""Each Gram-based method's defining property, checked on the per-task gradients themselves in
float64, with no code of the method: what its paper defines the update to be, as an optimality
certificate, a closed form, or the rule replayed vector by vector (each paper is named in the
method's module).

Every check takes the method (a fresh copy, seeded as the one that made the update, for the
random draws of the first call), the Jacobian ``J`` ``[K, P]``, the update ``d = Jᵀw`` and the
weights ``w``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import optimize
from torch import Tensor

# Relative tolerances: the barrier solves stop about 1e-9 short and smooth norms by 1e-6; a
# wrong update misses by far more than these.
SOLVED = 1e-5


def close(got: Tensor, expected: Tensor, rtol: float = 1e-6) -> None:
    scale = max(float(expected.norm()), 1e-300)
    assert float((got - expected).norm()) <= rtol * scale, (got, expected)


def in_simplex(w: Tensor, what: str) -> None:
    assert float(w.min()) >= -SOLVED and abs(float(w.sum()) - 1) <= SOLVED, (what, w)


def min_norm_point(jacobian: Tensor) -> Tensor:
    """The shortest vector of the gradients' convex hull, by non-negative least squares with
    the simplex's sum as one heavily weighted equation (an active-set solve, exact to its
    weight's precision)."""
    scale = float(jacobian.norm(dim=1).max())
    heavy = 1e4 * scale
    matrix = np.vstack([jacobian.T.numpy(), np.full((1, jacobian.shape[0]), heavy)])
    target = np.concatenate([np.zeros(jacobian.shape[1]), [heavy]])
    w, _ = optimize.nnls(matrix, target, maxiter=50 * jacobian.shape[0])
    return torch.from_numpy(w / w.sum()) @ jacobian


# -- the rules replayed vector by vector ------------------------------------------------------


def projected_gradients(jacobian: Tensor, orders: Tensor) -> Tensor:
    """PCGrad's ``g_i^PC``: from ``g_i``, for each ``j`` in task i's order, remove the projection
    onto the original ``g_j`` while the two conflict."""
    rows = []
    for i, order in enumerate(orders.tolist()):
        g = jacobian[i].clone()
        for j in order:
            product = g @ jacobian[j]
            if product < 0:
                g = g - product / (jacobian[j] @ jacobian[j]) * jacobian[j]
        rows.append(g)
    return torch.stack(rows)


def pcgrad(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    projected = projected_gradients(jacobian, method.visiting_orders(jacobian.shape[0]))
    close(update, projected.mean(0) if method.reduction == "mean" else projected.sum(0))


def gradvac(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    # its targets start at 0: raising a negative cosine to 0 is PCGrad's projection, summed
    close(update, projected_gradients(jacobian, method.visiting_orders(jacobian.shape[0])).sum(0))


# -- closed forms -----------------------------------------------------------------------------


def mean(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``w_i = 1/K``."""
    close(weights, torch.full_like(weights, 1 / len(weights)), rtol=1e-12)
    close(update, jacobian.mean(0))


def aligned_mtl(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``Ĵ = σ U Vᵀ`` from the SVD ``J = U S Vᵀ`` (singular values at most the rank cut-off
    dropped, ``σ`` the smallest kept), and ``d = Ĵᵀ 1``."""
    u, s, vt = torch.linalg.svd(jacobian, full_matrices=False)
    kept = s.square() > method.rank_tol * jacobian.shape[0] * s.max().square()
    aligned = s[kept].min() * u[:, kept] @ vt[kept]
    close(update, aligned.sum(0))


def nash_mtl(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``α > 0`` with ``β_i ((C + εI)β)_i = 1``, ``β_i = α_i ‖g_i‖`` and C the gradients'
    cosines, so ``α_i (Gα)_i = 1 − ε β_i² ≤ 1``."""
    norms = jacobian.norm(dim=1)
    units = jacobian / norms[:, None]
    beta = weights * norms
    assert float(weights.min()) > 0, weights
    equations = beta * ((units @ units.T + method.ridge * torch.eye(len(beta))) @ beta)
    # rank-deficient gradients make β grow to about 1/√ε, where the solve keeps 1e-5 or so
    assert float((equations - 1).abs().max()) <= 1e-4, equations
    assert float(update @ update) <= len(weights) * (1 + 1e-9)


# -- optimality certificates ------------------------------------------------------------------


def mgda(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``w ∈ Δ`` and ``g_j · d ≥ ‖d‖²`` for every task: the optimality conditions of the
    shortest point of the hull, and no task conflicts with the update."""
    in_simplex(weights, "weights")
    scale = float(jacobian.norm(dim=1).max()) ** 2
    assert float((jacobian @ update).min() - update @ update) >= -SOLVED * scale


def regularised_min_norm(jacobian: Tensor, w: Tensor, shifted: Tensor) -> None:
    """``w ∈ Δ`` minimises ``½‖g_w + s‖²`` (``shifted = g_w + s``): ``g_j · shifted ≥
    Σ_i w_i g_i · shifted`` for every j."""
    in_simplex(w, "w*")
    gradient = jacobian @ shifted
    scale = float(jacobian.norm(dim=1).max()) ** 2
    assert float(gradient.min() - w @ gradient) >= -SOLVED * scale


def sdmgrad(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``d = (g_w* + λ g0) / (1 + λ)`` with ``w* = argmin_{w∈Δ} ½‖g_w + λ g0‖²``."""
    size, lmbda = jacobian.shape[0], method.lmbda
    w = (1 + lmbda) * weights - lmbda / size
    regularised_min_norm(jacobian, w, (1 + lmbda) * update)


def sdmgrad_os(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """SDMGrad on the sampled tasks alone; the others get weight 0."""
    sampled = method.sample(jacobian.shape[0])
    others = torch.ones(jacobian.shape[0], dtype=torch.bool)
    others[sampled] = False
    assert torch.all(weights[others] == 0), weights
    sdmgrad(method, jacobian[sampled], update, weights[sampled])


def conflict_averse(
    gradients: Tensor, anchor: Tensor, weights: Tensor, c: float, radius_scale: float = 1.0
) -> None:
    """CAGrad's certificate for the update ``d = Σ_i weights_i g_i`` (before any rescaling):
    ``d = g0 + c‖g0‖ g_w/‖g_w‖`` with ``g0 = Σ_i anchor_i g_i`` and ``w ∈ Δ`` (so ``d`` lies on
    the sphere ``‖d − g0‖ = c‖g0‖``), and ``w`` closes the duality gap of
    ``max_{‖x − g0‖ ≤ ρ} min_i g_i·x = min_{w∈Δ} g_wᵀg0 + ρ‖g_w‖`` at ``ρ = radius_scale·c‖g0‖``:
    weak duality bounds every feasible x by every w, so equality proves both optimal."""
    g0 = anchor @ gradients
    update = weights @ gradients
    radius = c * g0.norm()
    assert abs(float((update - g0).norm() - radius)) <= SOLVED * float(radius)
    w = (weights - anchor) / (weights - anchor).sum()
    in_simplex(w, "w*")
    g_w = w @ gradients
    rho = radius_scale * radius
    primal = (gradients @ (g0 + rho * g_w / g_w.norm())).min()
    dual = g_w @ g0 + rho * g_w.norm()
    scale = float(g0.norm() * gradients.norm(dim=1).max())
    assert float(dual - primal) <= SOLVED * scale, (float(primal), float(dual))


def undo_rescale(method, weights: Tensor) -> Tensor:
    return weights * (1.0, 1.0 + method.c**2, 1.0 + method.c)[method.rescale]


def cagrad(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    size = jacobian.shape[0]
    anchor = torch.full((size,), 1 / size, dtype=torch.float64)
    conflict_averse(jacobian, anchor, undo_rescale(method, weights), method.c)


def cagrad_fast(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """CAGrad on the groups' gradients ``A J`` (A: one task each, and the rest averaged), whose
    weights reach the tasks through ``Aᵀ``: the tasks of one group share a weight."""
    grouping = method.grouping(jacobian.shape[0])
    group_weights = torch.linalg.lstsq(grouping.T, weights[:, None]).solution[:, 0]
    close(group_weights @ grouping, weights)
    anchor = grouping.count_nonzero(dim=1).double() / jacobian.shape[0]
    weights = undo_rescale(method, group_weights)
    conflict_averse(grouping @ jacobian, anchor, weights, method.c)


def stationary(jacobian: Tensor) -> bool:
    """Whether a convex combination of the gradients vanishes (up to rounding): no direction
    then improves every task."""
    largest = float(jacobian.norm(dim=1).max())
    return float(min_norm_point(jacobian).norm()) <= 1e-6 * largest


def imgrad(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """CAGrad's update from the ``w`` that minimises ``(1.5 − cm) g_wᵀg0 + cm c‖g0‖‖g_w‖``,
    ``cm = cos(g0, g_MGDA)`` (0 at a Pareto-stationary point, where ``g_MGDA = 0``): CAGrad's
    dual at the radius ``c‖g0‖ · cm / (1.5 − cm)``."""
    size = jacobian.shape[0]
    g0 = jacobian.mean(0)
    cm = 0.0
    if not stationary(jacobian):
        cm = float(torch.cosine_similarity(g0, min_norm_point(jacobian), dim=0).clamp(0, 1))
    anchor = torch.full((size,), 1 / size, dtype=torch.float64)
    conflict_averse(jacobian, anchor, undo_rescale(method, weights), method.c, cm / (1.5 - cm))


def conicgrad(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``max_d min_i g_i·d`` subject to ``cos(d, g0) ≥ c`` and ``‖d‖ = ‖g0‖``. For any ``w ∈ Δ``,
    ``min_i g_i·d ≤ g_w·d ≤ ‖g0‖ h(g_w)``, ``h`` the support function of that cap; the update is
    optimal when a ``w`` reaches the bound. That ``w`` lies on the line through the mean's
    weights and the update's (the update is a positive mix of ``g_w`` and ``g0``): searched
    there. At a Pareto-stationary point (``0`` in the hull) the best is the zero update."""
    g0 = jacobian.mean(0)
    length, unit = g0.norm(), g0 / g0.norm()
    primal = (jacobian @ update).min()
    scale = float(length * jacobian.norm(dim=1).max())
    if stationary(jacobian):
        assert float(update.norm()) <= SOLVED * float(length)
        return
    assert abs(float(update.norm() - length)) <= SOLVED * float(length)
    assert float(update @ unit) >= (method.c - SOLVED) * float(length)
    sine = math.sqrt(1 - method.c**2)

    def bound(w: Tensor) -> float:
        v = w @ jacobian
        along = v @ unit
        if along >= method.c * v.norm():
            return float(length * v.norm())
        return float(length * (method.c * along + sine * (v - along * unit).norm()))

    size = jacobian.shape[0]
    uniform = torch.full((size,), 1 / size).double()
    own = weights / weights.sum()
    below = own < uniform  # where moving towards ``own`` leaves the simplex
    reach = float(((uniform / (uniform - own))[below]).min()) if below.any() else 10.0
    found = optimize.minimize_scalar(
        lambda t: bound(t * own + (1 - t) * uniform),
        bounds=(0.0, reach),
        method="bounded",
        options={"xatol": 1e-12},
    )
    assert found.fun - float(primal) <= SOLVED * scale, (found.fun, float(primal))


def gradops(method, jacobian: Tensor, update: Tensor, weights: Tensor) -> None:
    """``Σ_i g'_i``, each ``g'_i`` the residual of ``g_i`` after least squares on the others
    (on rank-deficient gradients, nothing is left)."""
    residuals = []
    for i in range(jacobian.shape[0]):
        others = torch.cat([jacobian[:i], jacobian[i + 1 :]])
        fit = torch.linalg.lstsq(others.T, jacobian[i][:, None]).solution[:, 0]
        residuals.append(jacobian[i] - fit @ others)
    expected = torch.stack(residuals).sum(0)
    largest = float(jacobian.norm(dim=1).max())
    assert float((update - expected).norm()) <= 1e-5 * largest
    assert float((jacobian @ update).min()) >= -1e-6 * largest**2


PROPERTIES: dict[str, Callable[..., None]] = {
    "aligned-mtl": aligned_mtl,
    "cagrad": cagrad,
    "cagrad-fast": cagrad_fast,
    "conicgrad": conicgrad,
    "gradops": gradops,
    "gradvac": gradvac,
    "imgrad": imgrad,
    "mean": mean,
    "mgda": mgda,
    "nash-mtl": nash_mtl,
    "pcgrad": pcgrad,
    "sdmgrad": sdmgrad,
    "sdmgrad-os": sdmgrad_os,
}
