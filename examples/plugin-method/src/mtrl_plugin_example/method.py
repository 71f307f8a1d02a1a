"""Task weights from each task's cosine to the mean gradient, through a softmax."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators import Aggregator, normalized_gram


@dataclasses.dataclass
class CosineSoftmax(Aggregator):
    """``w = softmax(-c / temperature)`` with ``c_k = cos(g_k, ḡ)``, ``ḡ`` the mean gradient:
    the tasks that agree least with the mean get the largest share of the update, and a high
    temperature gives the mean back. Everything comes from the Gram matrix: ``g_k·ḡ`` is the
    mean of row k, ``‖ḡ‖²`` the mean of all entries.

    Args:
        temperature: how sharply the weights follow the cosines, > 0.
    """

    name = "cosine-softmax"
    # The cosines do not change when every gradient is rescaled.
    scale_invariant = True

    temperature: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}")

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        scaled = normalized_gram(gram)  # float64, mean diagonal 1: no scale to overflow
        to_mean = scaled.mean(dim=1)
        norms = scaled.diagonal().clamp_min(0).sqrt() * to_mean.mean().clamp_min(0).sqrt()
        # a zero gradient (or a zero mean) has cosine 0: its dot products are 0 too
        cosines = to_mean / norms.clamp_min(torch.finfo(torch.float64).tiny)
        return torch.softmax(-cosines.clamp(-1, 1) / self.temperature, dim=0).to(gram.dtype)
