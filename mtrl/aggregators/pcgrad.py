"""PCGrad: project away the conflicting part of each task gradient, one task pair at a time.

Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram, register
from mtrl.aggregators.tools import reseed, upload


@register("pcgrad")
@dataclasses.dataclass
class PCGrad(Aggregator):
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

    reduction: str = "mean"
    seed: int | None = None
    _generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"pcgrad: reduction must be 'mean' or 'sum', got {self.reduction!r}")
        self._generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        reseed(self._generator, self.seed)

    def visiting_orders(self, size: int) -> Tensor:
        """One random permutation of the other tasks per task: row i lists the j ≠ i."""
        keys = torch.rand(size, size, generator=self._generator, dtype=torch.float64)
        keys.fill_diagonal_(2.0)  # sorts each task itself last, where it is dropped
        return keys.argsort(dim=1)[:, : size - 1]

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        size = gram.shape[0]
        g = normalized_gram(gram)
        orders = upload(self.visiting_orders(size), g.device)
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

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])
