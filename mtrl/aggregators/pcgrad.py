"""PCGrad: project away the conflicting part of each task gradient, one task pair at a time.

Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.tools import Seeded, visiting_orders


@dataclasses.dataclass
class PCGrad(Seeded, Aggregator):
    """For each task i, visit the other tasks j in a random order; while ``g_i^PC · g_j < 0``
    remove the projection of ``g_i^PC`` onto the original ``g_j``.

    In Gram form ``g_i^PC = Jᵀ c_i`` and ``g_i^PC · g_j = (G c_i)_j``, so all K projections run
    together, one visiting position at a time: K−1 small vector steps instead of K² vector
    products in parameter space.

    Args:
        reduction: ``"mean"`` (the MT10 code bases) or ``"sum"`` (the paper) of the ``g_i^PC``.
        seed: seeds the generator of the visiting orders; ``None`` draws it from torch's global
            generator, so ``torch.manual_seed`` makes runs repeatable.
    """

    name = "pcgrad"

    scale_invariant = True

    reduction: str = "mean"
    seed: int | None = None
    _generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"pcgrad: reduction must be 'mean' or 'sum', got {self.reduction!r}")
        self._start_generator()

    def visiting_orders(self, size: int) -> Tensor:
        """One random permutation of the other tasks per task: row i lists the j ≠ i."""
        return visiting_orders(self._generator, size)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        size = gram.shape[0]
        g = normalized_gram(gram)
        orders = visiting_orders(self.generator(g.device), size)
        coefficients = torch.eye(size, dtype=g.dtype, device=g.device)  # row i is c_i
        squared_norms = g.diagonal().clamp_min(torch.finfo(g.dtype).tiny)
        tasks = torch.arange(size, device=g.device)
        for position in range(size - 1):
            other = orders[:, position]
            products = (coefficients * g[other]).sum(dim=1)  # g_i^PC · g_other(i)
            coefficients[tasks, other] -= products.clamp_max(0) / squared_norms[other]
        total = coefficients.sum(dim=0)
        if self.reduction == "mean":
            total = total / size
        return total.to(gram.dtype)
