"""What the architectures share: task embeddings looked up by the one-hot task id, and the
reshaping of a batch in any layout into rows."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtrl.agents.networks import EnsembleBias, hidden_bounds


class TaskTable(nn.Module):
    """One learned vector per task (per ensemble member), looked up by the one-hot task id: a
    linear map of the one-hot without bias, i.e. a task embedding. Task-specific: each task's
    row is reached by that task alone. Drawn U(±``bound``) or N(0, ``std``²)."""

    shared = False

    def __init__(
        self,
        members: int,
        num_tasks: int,
        width: int,
        *,
        bound: float | None = None,
        std: float | None = None,
    ) -> None:
        super().__init__()
        if (bound is None) == (std is None):
            raise ValueError("a task table is drawn either uniform (bound) or normal (std)")
        self.weight = nn.Parameter(torch.empty(members, num_tasks, width))
        if bound is not None:
            nn.init.uniform_(self.weight, -bound, bound)
        else:
            nn.init.normal_(self.weight, std=std)

    def forward(self, task_onehot: Tensor) -> Tensor:
        """``[members, N, width]`` for the one-hots of N rows."""
        onehot = task_onehot.reshape(-1, task_onehot.shape[-1])
        return torch.einsum("nk,mkw->mnw", onehot, self.weight)


def embedding(members: int, num_tasks: int, width: int, init: str) -> TaskTable:
    """A task embedding as Flax's ``nn.Embed`` draws it under ``init="he"`` (N(0, 1/width):
    variance scaling 1 on the fan-in, which for an embedding table is its width), or as torch's
    ``nn.Embedding`` (N(0, 1)) under ``"torch"``."""
    std = 1 / math.sqrt(width) if init == "he" else 1.0
    return TaskTable(members, num_tasks, width, std=std)


def one_hot_bounds(init: str, num_tasks: int) -> tuple[float, float]:
    """The weight and bias bounds of a dense layer on the one-hot: a hidden layer's of fan-in K
    (He-uniform, zero bias) under ``"he"``, ``nn.Linear``'s (U(±1/√K)) under ``"torch"``."""
    weight_bound, bias_bound = hidden_bounds(init, num_tasks)
    default = 1 / math.sqrt(num_tasks)
    return (
        default if weight_bound is None else weight_bound,
        default if bias_bound is None else bias_bound,
    )


class TaskDense(nn.Module):
    """A dense layer on the one-hot task id, as the reference code writes a task encoding: each
    weight row is one task's own (a :class:`TaskTable`) and the bias is shared by every task (an
    :class:`~mtrl.agents.networks.EnsembleBias`, which forms per-task gradients). Drawn as
    :func:`one_hot_bounds` says."""

    def __init__(self, members: int, num_tasks: int, width: int, init: str) -> None:
        super().__init__()
        weight_bound, bias_bound = one_hot_bounds(init, num_tasks)
        self.table = TaskTable(members, num_tasks, width, bound=weight_bound)
        self.bias = EnsembleBias(members, width, bias_bound)

    def forward(self, task_onehot: Tensor) -> Tensor:
        return self.bias(self.table(task_onehot))

    def shared_layers(self) -> dict[str, nn.Module]:
        return {"bias": self.bias}


def rows(x: Tensor) -> Tensor:
    """A batch of any layout as rows ``[N, d]`` (a grouped batch's task k's rows together)."""
    return x.reshape(-1, x.shape[-1])


def per_member(h: Tensor, members: int) -> Tensor:
    """``[N, d]`` rows given to every member, ``[members, N, d]``."""
    return h.unsqueeze(0).expand(members, -1, -1) if h.dim() == 2 else h


def task_count(layout: str, lead: torch.Size) -> int:
    return lead[0] if layout == "grouped" else 1


def prefixed(**parts: nn.Module) -> dict[str, nn.Module]:
    """The shared layers of each part, each label prefixed with the part's name."""
    return {
        f"{name}_{label}": layer
        for name, part in parts.items()
        for label, layer in part.shared_layers().items()
    }
