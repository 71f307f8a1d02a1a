"""Plain averaging of the task gradients: multi-task SAC with no deconfliction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator


@dataclasses.dataclass
class Mean(Aggregator):
    """``w_i = 1/K``: the gradient of the mean of the task losses."""

    name = "mean"

    needs_gram: ClassVar[bool] = False
    scale_invariant: ClassVar[bool] = True

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        like = gram if gram is not None else losses
        size = like.shape[0]
        return torch.full((size,), 1.0 / size, dtype=like.dtype, device=like.device)
