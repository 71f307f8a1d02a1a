"""Plain averaging of the task gradients: multi-task SAC with no deconfliction."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, register


@register("mean")
@dataclasses.dataclass
class Mean(Aggregator):
    """``w_i = 1/K``: the gradient of the mean of the task losses."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        size = gram.shape[0]
        return torch.full((size,), 1.0 / size, dtype=gram.dtype, device=gram.device)
