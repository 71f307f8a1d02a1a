"""Layer normalisation whose scale and shift every task shares, forming per-task gradients from
one grouped pass as :class:`~mtrl.agents.networks.EnsembleLinear` does."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EnsembleLayerNorm(nn.Module):
    """``members`` layer normalisations over the last axis, each with its own elementwise scale
    (``weight``, ones) and shift (``bias``, zeros), ``[members, 1, width]``; inputs are
    ``[members, N, width]``. ``eps`` is Flax's ``nn.LayerNorm`` default, as the BRC code uses it.

    The affine part is elementwise, so task k's gradient is a sum over its rows: ``Σ x̂_i ⊙ δ_i``
    for the scale and ``Σ δ_i`` for the shift, where ``x̂`` is the normalised input (recomputed
    from the input the grouped pass keeps) and ``δ`` the output gradient. These are ``[K, width]``
    per member, small enough to form whole in every mode: the Gram-first methods form them too.
    """

    def __init__(self, members: int, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(members, 1, width))
        self.bias = nn.Parameter(torch.zeros(members, 1, width))

    def normalized(self, h: Tensor) -> Tensor:
        variance, mean = torch.var_mean(h, dim=-1, keepdim=True, correction=0)
        return (h - mean) * torch.rsqrt(variance + self.eps)

    def forward(self, h: Tensor) -> Tensor:
        return self.normalized(h) * self.weight + self.bias

    def _task_sums(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> tuple[Tensor, Tensor]:
        """Each task's scale and shift gradients, ``[members, K, width]`` each."""
        members, rows, width = inputs.shape
        scaled = self.normalized(inputs) * output_grads
        weight = scaled.view(members, tasks, rows // tasks, width).sum(dim=2)
        bias = output_grads.reshape(members, tasks, rows // tasks, width).sum(dim=2)
        return weight, bias

    def per_task_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> dict:
        """``[K, members, 1, width]`` views of gradients stored members first (as
        :meth:`~mtrl.agents.networks.EnsembleLinear.per_task_gradients` hands them back)."""
        weight, bias = self._task_sums(inputs, output_grads, tasks)
        return {
            "weight": weight.transpose(0, 1).unsqueeze(2),
            "bias": bias.transpose(0, 1).unsqueeze(2),
        }

    def task_gram(
        self, inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]
    ) -> Tensor:
        """``J_l J_lᵀ`` of the scale and shift (``tile`` is not needed: the per-task gradients
        are no larger than one row of the layer's output per task)."""
        weight, bias = self._task_sums(inputs, output_grads, tasks)
        both = torch.cat([weight, bias], dim=-1)
        return torch.bmm(both, both.transpose(1, 2)).sum(dim=0)

    def task_gram_by_rows(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        return self.task_gram(inputs, output_grads, tasks, (1, 1))

    def combined_gradients(self, inputs: Tensor, output_grads: Tensor, row_weights: Tensor):
        """The gradient of ``Σ_k w_k L_k``: each row's output gradient weighted by its task's
        ``w_k`` (``row_weights``, one per row), then summed over the rows."""
        weighted = output_grads * row_weights[:, None]
        return {
            "weight": (self.normalized(inputs) * weighted).sum(dim=1, keepdim=True),
            "bias": weighted.sum(dim=1, keepdim=True),
        }
