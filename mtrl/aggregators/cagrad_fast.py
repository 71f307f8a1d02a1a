"""Fast CAGrad: CAGrad on a few random groups of tasks instead of every task.

Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021 (the
practical speed-up; code: github.com/Cranial-XIX/CAGrad, ``mtrl/mtrl_files/cagrad.py``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from mtrl.aggregators.base import normalized_gram
from mtrl.aggregators.cagrad import CAGrad, conflict_averse_dual, conflict_averse_update
from mtrl.aggregators.tools import Seeded, check_count


@dataclasses.dataclass
class FastCAGrad(Seeded, CAGrad):
    """Each call shuffles the tasks into n groups: n − 1 single tasks and one group holding the
    other K − n + 1, whose gradients are averaged. With the ``n × K`` grouping matrix A (rows
    ``e_j`` and the rest's ``1/(K−n+1)`` indicator), CAGrad runs on the group Gram matrix
    ``A G Aᵀ`` with the exact mean ``g0 = Aᵀω``, ``ω = (1/K, …, 1/K, (K−n+1)/K)``; the group
    weights map back to task weights as ``Aᵀ``. One group is the mean; K groups is CAGrad.

    This is the reference code's rule (``cagrad_fast<n>``: n = 4 on MT10, 8 on MT50, update
    divided by 1 + c), where it only backpropagates n losses; here all K gradients exist
    already and the grouping only shrinks the dual. (The reference's loop over "the rest"
    starts one task late and drops that task from its average; the rule above is the intended
    one.)

    Args:
        c: CAGrad's radius, in [0, 1): 0.9 on MT10, 0.5 on MT50.
        rescale: 0 none, 1 divide by ``1 + c²``, 2 by ``1 + c`` (the default, as the reference).
        smoothing: as in CAGrad.
        groups: n ≥ 1, the number of groups (at most K are used).
        seed: seeds the grouping generator; ``None`` draws it from torch's global generator.
    """

    name = "cagrad-fast"

    rescale: int = 2
    groups: int = 4
    seed: int | None = None
    _generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count(self.name, "groups", self.groups)
        self._start_generator()

    def grouping(self, size: int, device: torch.device | str = "cpu") -> Tensor:
        """The ``[n, K]`` float64 grouping matrix A on ``device``; draws from the generator."""
        groups = min(self.groups, size)
        generator = self.generator(torch.device(device))
        device = generator.device
        order = torch.randperm(size, generator=generator, device=device)
        # the task at position p of the order joins group min(p, n − 1)
        positions = torch.arange(size, device=device).clamp_max(groups - 1)
        group_of = torch.empty_like(order).scatter_(0, order, positions)
        members = torch.arange(groups, device=device)[:, None] == group_of
        matrix = members.to(torch.float64)
        return matrix / matrix.sum(dim=1, keepdim=True)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        g = normalized_gram(gram)
        size = g.shape[0]
        grouping = self.grouping(size, g.device)
        group_gram = grouping @ g @ grouping.T
        anchor = grouping.count_nonzero(dim=1).to(g.dtype) / size  # ω: group sizes / K
        radius = self.c * (anchor @ group_gram @ anchor).clamp_min(0).sqrt()
        w = conflict_averse_dual(group_gram, anchor, radius, self.smoothing)
        update = conflict_averse_update(group_gram, anchor, w, self.c, self.rescale, self.smoothing)
        return (update @ grouping).to(gram.dtype)
