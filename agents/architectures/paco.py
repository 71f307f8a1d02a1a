"""PaCo, parameter compositions (Sun et al., NeurIPS 2022), as the JAX Meta-World+ code builds it
(metaworld_algorithms/nn/paco.py)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import TaskDense, per_member, rows, task_count
from mtrl.agents.networks import head_bounds, hidden_bounds, linear_grams, linear_grams_by_rows


class PaCoLinear(nn.Module):
    """``S`` parallel affine maps mixed per task (parameter compositions, Sun et al., NeurIPS
    2022): task τ's map is ``Σ_i c_τi (W_i, b_i)``. The sets ``(W_i, b_i)`` are shared; the
    compositions ``c`` are one vector per task, given to :meth:`forward`.

    Task τ's gradient of ``W_i`` is ``c_τi h_τᵀ δ_τ``, so the layer's Gram matrix is that of
    the plain map's per-task gradients times ``c cᵀ`` (per member), and ``Jᵀw`` weights each row
    by ``w_τ c_τi``.
    """

    def __init__(self, members, sets, fan_in, fan_out, weight_bound=None, bias_bound=None) -> None:
        super().__init__()
        default = 1 / math.sqrt(fan_in)
        weight_bound = default if weight_bound is None else weight_bound
        bias_bound = default if bias_bound is None else bias_bound
        self.weight = nn.Parameter(torch.empty(members, sets, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(members, sets, 1, fan_out))
        nn.init.uniform_(self.weight, -weight_bound, weight_bound)
        nn.init.uniform_(self.bias, -bias_bound, bias_bound)
        self._mix: Tensor | None = None  # each task's composition, from the last grouped pass

    def forward(self, h: Tensor, mix: Tensor, layout: str, tasks: int) -> Tensor:
        """``h`` ``[members, N, in]``, ``mix`` each row's composition ``[members, N, S]``."""
        if layout == "grouped":
            per_task = mix.view(mix.shape[0], tasks, -1, mix.shape[-1])[:, :, 0]  # [M, K, S]
            self._mix = per_task.detach()
            weight = torch.einsum("mks,msio->mkio", per_task, self.weight)
            bias = torch.einsum("mks,msio->mkio", per_task, self.bias)
            grouped = h.view(h.shape[0], tasks, -1, h.shape[-1])
            return (torch.einsum("mkbi,mkio->mkbo", grouped, weight) + bias).flatten(1, 2)
        outputs = torch.einsum("mni,msio->msno", h, self.weight) + self.bias
        return torch.einsum("mns,msno->mno", mix, outputs)

    def _base_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> tuple:
        members, rows, fan_in = inputs.shape
        h = inputs.reshape(members * tasks, rows // tasks, fan_in)
        delta = output_grads.reshape(members * tasks, rows // tasks, -1)
        weight = torch.bmm(h.transpose(1, 2), delta).view(members, tasks, fan_in, -1)
        return weight, delta.sum(dim=1).view(members, tasks, 1, -1)

    def per_task_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> dict:
        weight, bias = self._base_gradients(inputs, output_grads, tasks)
        mix = self._mix  # [M, K, S]
        return {
            "weight": torch.einsum("mks,mkio->kmsio", mix, weight),
            "bias": torch.einsum("mks,mkio->kmsio", mix, bias),
        }

    def _compositions(self) -> Tensor:
        return torch.bmm(self._mix, self._mix.transpose(1, 2))  # [M, K, K]

    def task_gram(
        self, inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]
    ) -> Tensor:
        grams = linear_grams(inputs, output_grads, tasks, tile)
        return (self._compositions() * grams).sum(dim=0)

    def task_gram_by_rows(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        grams = linear_grams_by_rows(inputs, output_grads, tasks)
        return (self._compositions() * grams).sum(dim=0)

    def combined_gradients(self, inputs: Tensor, output_grads: Tensor, row_weights: Tensor):
        """From the plain map's per-task gradients ``[M, K, in, out]`` (the ordinary backward
        pass through the composed maps forms them too), each task's weighted by ``w_τ c_τ``."""
        tasks = self._mix.shape[1]
        weight, bias = self._base_gradients(inputs, output_grads, tasks)
        scaled = self._mix * row_weights[:: inputs.shape[1] // tasks][None, :, None]
        return {
            "weight": torch.einsum("mks,mkio->msio", scaled, weight),
            "bias": torch.einsum("mks,mkio->msio", scaled, bias),
        }


class PaCo(nn.Module):
    """Every layer, the output layer too, is a :class:`PaCoLinear` of ``sets`` parameter sets,
    mixed by one composition vector per task, no softmax. The compositions are a dense layer on
    the one-hot: each task's row its own, He-uniform, plus a bias shared by every task (zero at
    the start, with per-task gradients like any shared parameter). Each set's hidden layers are
    drawn He with zero biases, its output layer as the agent's. The paper's loss maskout and
    weight reset are left out, as in the reference code."""

    def __init__(
        self, state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound, sets: int = 5
    ) -> None:
        super().__init__()
        self.members = members
        self.compositions = TaskDense(members, num_tasks, sets, init)
        sizes = [state_dim, *hidden, out_dim]
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            PaCoLinear(
                members,
                sets,
                fan_in,
                fan_out,
                *(head_bounds(init, head_bound) if index == last else hidden_bounds(init, fan_in)),
            )
            for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes))
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members = state.shape[:-1], self.members
        mix = self.compositions(task_onehot)  # [M, N, S]
        h = per_member(rows(state), members)
        for index, layer in enumerate(self.layers):
            h = layer(h, mix, layout, task_count(layout, lead))
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        layers = {f"compositions_{k}": v for k, v in self.compositions.shared_layers().items()}
        return layers | {f"layer{i}": layer for i, layer in enumerate(self.layers)}
