"""SDMGrad: MGDA's min-norm problem regularised towards the average gradient.

Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic
Algorithms", NeurIPS 2023 (code: github.com/ml-opt-lab/sdmgrad).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator, normalized_gram
from mtrl.aggregators.mgda import min_norm_weights
from mtrl.aggregators.tools import Seeded, check_count, uniform


def sdmgrad_weights(gram: Tensor, lmbda: float, active: Tensor | None = None) -> Tensor:
    """Weights of ``d = (g_w* + λ g0) / (1 + λ)``, ``w* = argmin_{w∈Δ} ½‖g_w + λ g0‖²``, for a
    normalised float64 Gram matrix; with ``active`` (a boolean mask), the same for the tasks in
    it alone, with weight 0 for the others."""
    if active is None:
        mean = uniform(gram.shape[0], gram)
    else:
        mean = active.to(gram.dtype)
        mean = mean / mean.sum()
    w = min_norm_weights(gram, lmbda * mean, active)
    return (w + lmbda * mean) / (1 + lmbda)


def _check_lmbda(name: str, lmbda: float) -> None:
    if not (math.isfinite(lmbda) and lmbda >= 0):
        raise ValueError(f"{name}: lmbda must be a finite number >= 0, got {lmbda}")


@dataclasses.dataclass
class SDMGrad(Aggregator):
    """``w* = argmin_{w∈Δ} ½‖g_w + λ g0‖²`` and ``d = (g_w* + λ g0) / (1 + λ)``: the min-norm
    point of the task gradients' hull shifted by ``λ g0``; equivalently, d is the min-norm point
    of the hull shrunk towards ``g0`` by the factor ``1/(1 + λ)``. λ = 0 is MGDA; as λ → ∞ the
    update tends to the mean gradient, with ``‖d − g0‖ ≤ max_i ‖g_i − g0‖ / (1 + λ)``.

    The inner problem is solved exactly by a Newton barrier method instead of the reference
    code's 20 projected SGD steps.

    Args:
        lmbda: λ ≥ 0, the pull towards the average gradient; the paper uses 0.6 on MT10 and MT50.
    """

    name = "sdmgrad"

    scale_invariant = True

    lmbda: float = 0.6

    def __post_init__(self) -> None:
        _check_lmbda(self.name, self.lmbda)

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return sdmgrad_weights(normalized_gram(gram), self.lmbda).to(gram.dtype)


@dataclasses.dataclass
class SDMGradOS(Seeded, Aggregator):
    """SDMGrad with objective sampling: each call samples a subset S of the tasks and applies
    SDMGrad to them alone (``g0`` is the mean over S), so ``d = (g_w* + λ g0_S) / (1 + λ)`` and
    tasks outside S get weight 0.

    As in the reference code, each task is in S independently with probability
    ``min(num_samples / K, 1)``, redrawn if S comes out empty; here the redraw is exact
    without a loop: the size of S is drawn from the binomial law conditioned on ≥ 1 and S
    is a uniform subset of that size. The draws and the solve on S run on the device, in shapes
    that do not depend on the size of S (a mask: see
    :func:`mtrl.aggregators.simplex.minimize_on_simplex`), so nothing waits for the host and
    the update can be captured. The reference only computes the sampled tasks' gradients; this
    module receives all of them and ignores the rest.

    Args:
        lmbda: λ ≥ 0 as in ``sdmgrad`` (0.6 in the paper).
        num_samples: the expected size of S (the reference's ``sdmgrad_os<k>``: 4 on MT10, 8 on
            MT50).
        seed: seeds the sampling generator; ``None`` draws it from torch's global generator.
    """

    name = "sdmgrad-os"

    scale_invariant = True

    lmbda: float = 0.6
    num_samples: int = 4
    seed: int | None = None
    _generator: torch.Generator = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_lmbda(self.name, self.lmbda)
        check_count(self.name, "num_samples", self.num_samples)
        self._start_generator()

    def sample(self, size: int, device: torch.device | str = "cpu") -> Tensor:
        """Which of ``size`` tasks are sampled: a boolean mask on ``device``, drawn there from
        the generator (nothing waits for the host, and a captured CUDA graph replays the
        draws)."""
        generator = self.generator(torch.device(device))
        device = generator.device
        probability = min(self.num_samples / size, 1.0)
        counts = torch.arange(1, size + 1, dtype=torch.float64, device=device)
        if probability < 1:
            log_pmf = (
                math.lgamma(size + 1)
                - torch.lgamma(counts + 1)
                - torch.lgamma(size - counts + 1)
                + counts * math.log(probability)
                + (size - counts) * math.log1p(-probability)
            )
        else:
            log_pmf = torch.where(counts == size, 0.0, -math.inf)
        cdf = torch.softmax(log_pmf, dim=0).cumsum(dim=0)
        draw = torch.rand((), generator=generator, dtype=torch.float64, device=device)
        count = torch.searchsorted(cdf, draw * cdf[-1]).clamp_max(size - 1) + 1
        order = torch.rand(size, generator=generator, dtype=torch.float64, device=device)
        # the first `count` tasks of a random order: a uniform subset of that size
        return order.argsort().argsort() < count

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        g = normalized_gram(gram)
        sampled = self.sample(g.shape[0], g.device)
        inside = sampled.to(g.dtype)
        # The sub-problem is normalised on its own, as if only these gradients existed.
        sub = g * torch.outer(inside, inside)
        scale = sub.diagonal().sum() / inside.sum()
        sub = sub / scale.clamp_min(torch.finfo(sub.dtype).tiny)
        return sdmgrad_weights(sub, self.lmbda, sampled).to(gram.dtype)
