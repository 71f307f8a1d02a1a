"""Nash-MTL: task weights from the Nash bargaining solution between the tasks.

Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (arXiv 2202.01017; code:
github.com/AvivNavon/nash-mtl, MT10 code in github.com/Cranial-XIX/FAMO ``mtrl_files``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator
from mtrl.aggregators.tools import geometric

# Newton steps with a line search over the step sizes 2, 1, ½, ..., 2⁻¹⁰ (STEP_SIZES: 12).
# From the start below, 25 steps bring |β_i ((C + εI)β)_i − 1| under 1e-6 on every test
# matrix, including rank-deficient ones whose β grow to about 1/√ε; the rest is margin (each
# step is one K×K solve).
NEWTON_STEPS = 40
STEP_SIZES = 12


@dataclasses.dataclass
class NashMTL(Aggregator):
    """``α > 0`` with ``α_i (Gα)_i = 1`` for every task, update ``Jᵀα``.

    ``Gα = 1/α`` is the stationarity condition of the strictly convex
    ``f(α) = ½ αᵀGα − Σ log α_i``, minimised here by a fixed number of damped Newton steps,
    each with a line search over a fixed ladder of step sizes evaluated at once (so the
    iterates stay in ``α > 0`` with no host synchronisation).
    With ``G = D C D`` (D the gradient norms, C the cosines) and ``β = Dα`` the condition reads
    ``β_i (Cβ)_i = 1``, so the solve runs on C with ``α = β/D``: the ridge ``ε`` in ``C + εI``
    means the same for every task whatever its norm, and a zero gradient gets ``α_i = 0``
    without disturbing the others. The ridge gives a rank-deficient G (a positive combination
    of the gradients vanishing, K > P) a finite solution; ``‖Jᵀα‖² = Σ α_i (Gα)_i ≤ K`` always.

    Unlike the other methods the update does not scale with the gradients: ``‖Jᵀα‖ = √K``
    whatever their size. The reference divides G by its Frobenius norm for its solver, which
    does not change the solution. Its supervised code then clips the update norm to
    ``max_norm = 1`` (a constant factor ``1/√K`` here) and its MT10 code divides it by
    ``max_norm = 1`` (a no-op); no clip is applied here. The reference also warm-starts 20
    convex-concave iterations from the previous α; this solve is exact and stateless.

    Args:
        ridge: ``ε`` added to the cosine matrix; the equations hold up to ``ε β_i²``.
    """

    name = "nash-mtl"

    scale_invariant = False  # the update's norm is √K whatever the gradients'

    ridge: float = 1e-8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ridge) and 0 < self.ridge < 1):
            raise ValueError(f"{self.name}: ridge must be in (0, 1), got {self.ridge}")

    def bargaining_weights(self, cosines: Tensor, active: Tensor) -> Tensor:
        """``β > 0`` with ``β_i ((C + εI)β)_i = 1`` for the float64 cosine matrix C; tasks not
        ``active`` (zero gradients) start, and stay, at their solution ``1/√ε``."""
        size = cosines.shape[0]
        matrix = cosines + self.ridge * torch.eye(size, dtype=cosines.dtype, device=cosines.device)
        ones = torch.ones(size, dtype=cosines.dtype, device=cosines.device)
        # β = t·1 with tβᵀ(C+εI)β = K: exact for identical and for orthogonal gradients
        start = (size / (ones @ matrix @ ones)).sqrt() * ones
        beta = torch.where(active, start, 1 / math.sqrt(self.ridge))
        # each Newton step tries the step sizes 2, 1, ½, …, 2⁻¹⁰ together and keeps the one
        # with the least f that stays inside α > 0: a line search without host syncs
        sizes = 2 * geometric(STEP_SIZES, 0.5, cosines)[:, None]  # 2, 1, ½, ...
        for _ in range(NEWTON_STEPS):
            gradient = matrix @ beta - 1 / beta
            hessian = matrix + torch.diag(beta.pow(-2))
            direction = -torch.linalg.solve_ex(hessian, gradient).result
            candidates = beta + sizes * direction
            feasible = (candidates > 0).all(dim=1)
            positive = torch.where(candidates > 0, candidates, 1.0)
            values = 0.5 * ((positive @ matrix) * positive).sum(dim=1) - positive.log().sum(dim=1)
            values = torch.where(feasible, values, torch.inf)
            # index_select: indexing with a 0-dim tensor would read it on the host
            beta = candidates.index_select(0, values.argmin().reshape(1))[0]
        return beta

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        g = gram.to(torch.float64)
        norms = g.diagonal().clamp_min(0).sqrt()
        active = norms > 0
        inverse_norms = torch.where(active, 1 / torch.where(active, norms, 1.0), 0.0)
        cosines = g * torch.outer(inverse_norms, inverse_norms)
        beta = self.bargaining_weights(cosines, active)
        return (beta * inverse_norms).to(gram.dtype)
