"""GradVac: raise each task pair's gradient cosine to a running target.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021 (arXiv 2010.05874).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.tools import Seeded, safe_divide, visiting_orders

# Floor on sqrt(1 − φ̂²): a target of exactly 1 (reachable by rounding) would ask for an
# infinite step; the floor caps it at a finite one.
_MIN_SINE = 1e-8


@dataclasses.dataclass
class GradVac(Seeded, Aggregator):
    """For each task i, start from ``g'_i = g_i`` and visit the other tasks j in a random order:
    with ``φ_ij = cos(g'_i, g_j)`` and the running target ``φ̂_ij``, if ``φ_ij < φ̂_ij`` add
    ``g_j ‖g'_i‖ (φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²))`` to ``g'_i``, which makes
    ``cos(g'_i, g_j) = φ̂_ij``; then ``φ̂_ij ← (1−β) φ̂_ij + β φ_ij``. The update is ``Σ_i g'_i``.

    In Gram form ``g'_i = Jᵀ c_i``, so ``g'_i·g_j = (G c_i)_j`` and ``‖g'_i‖² = c_iᵀ G c_i``,
    both updated in place as ``c_i`` changes; all K tasks advance together, one visiting
    position at a time, like PCGrad. The targets start at 0 (as in the paper and LibMTL) and
    every visited pair's target moves towards its observed cosine, as in the paper's
    algorithm (LibMTL only moves it when the cosine falls short of it). ``reset`` clears them.

    Args:
        beta: β in (0, 1], the EMA rate of the targets. The paper uses 0.01, LibMTL 0.5; no
            Meta-World code base with GradVac was found, so the paper's value is the default.
        seed: seeds the generator of the visiting orders; ``None`` draws it from torch's
            global generator.
    """

    name = "gradvac"

    scale_invariant = True

    beta: float = 0.01
    seed: int | None = None
    _generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)
    _targets: Tensor = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and 0 < self.beta <= 1):
            raise ValueError(f"{self.name}: beta must be in (0, 1], got {self.beta}")
        self._start_generator()
        self._targets = torch.zeros(0, 0, dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self._targets = torch.zeros(0, 0, dtype=torch.float64)

    @property
    def targets(self) -> Tensor:
        """The ``[K, K]`` running cosine targets ``φ̂_ij`` (empty before the first call)."""
        return self._targets

    def visiting_orders(self, size: int) -> Tensor:
        """One random permutation of the other tasks per task: row i lists the j ≠ i."""
        return visiting_orders(self._generator, size)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        size = gram.shape[0]
        g = normalized_gram(gram)
        if self._targets.shape != (size, size):
            self._targets = torch.zeros(size, size, dtype=g.dtype, device=g.device)
        targets = self._targets.to(g.device)
        orders = visiting_orders(self.generator(g.device), size)
        coefficients = torch.eye(size, dtype=g.dtype, device=g.device)  # row i is c_i
        products = g.clone()  # row i is G c_i: (G c_i)_j = g'_i · g_j
        squared = g.diagonal().clone()  # ‖g'_i‖² = c_iᵀ G c_i
        norms = g.diagonal().clamp_min(0).sqrt()
        tasks = torch.arange(size, device=g.device)
        for position in range(size - 1):
            other = orders[:, position]
            product = products[tasks, other]
            own = squared.clamp_min(0).sqrt()
            cosine = safe_divide(product, own * norms[other]).clamp(-1.0, 1.0)
            target = targets[tasks, other]
            target_sine = (1 - target.square()).clamp_min(0).sqrt().clamp_min(_MIN_SINE)
            step = own * (target * (1 - cosine.square()).clamp_min(0).sqrt() - cosine * target_sine)
            step = torch.where(cosine < target, safe_divide(step, norms[other] * target_sine), 0.0)
            # g'_i += step g_j, kept in Gram form without a K×K×K product per position
            coefficients[tasks, other] += step
            squared = squared + step * (2 * product + step * g[other, other])
            products = products + step[:, None] * g[other]
            targets[tasks, other] = (1 - self.beta) * target + self.beta * cosine
        self._targets = targets
        return coefficients.sum(dim=0).to(gram.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "targets": self._targets.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._targets = state["targets"].to(torch.float64).clone()
