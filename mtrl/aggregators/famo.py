"""FAMO: task weights learned from how each step changes the task losses, one backward pass.

Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtrl.aggregators.base import Aggregator


@dataclasses.dataclass
class FAMO(Aggregator):
    """With ``z = softmax(ξ)``, the update is the gradient of ``Σ_i z_i log ℓ_i``: task weights
    ``w_i ∝ z_i / ℓ_i`` (normalised here to sum to one, so that the step has the scale of the
    mean). After the step, ``ξ`` takes an Adam step along ``(∂z/∂ξ)ᵀ (log ℓ_t − log ℓ_{t+1})``
    with weight decay ``gamma``, which shifts weight to the tasks whose loss fell least.

    It reads the losses only, so no per-task gradient is ever computed. The losses must be
    positive: in multi-task SAC, FAMO weights the critic's losses and the actor keeps the plain
    mean, as in the reference multi-task RL code.

    The normalisation follows the paper, which divides the update by ``c = Σ_i z_i / ℓ_i``; the
    reference MT10 code (Cranial-XIX/FAMO, ``mtrl_files/famo.py``) multiplies by ``c`` instead,
    so its update is ``c²`` times this one. Adam makes the two nearly alike, except through its
    ε and where ``c`` changes fast.

    Args:
        lr: Adam learning rate of the logits ``ξ`` (0.025 on MT10).
        gamma: weight decay of the logits (0.01 on MT10).
        eps: added to the losses before division and logarithm.
    """

    name = "famo"

    lr: float = 0.025
    gamma: float = 0.01
    eps: float = 1e-8
    _logits: Tensor | None = dataclasses.field(default=None, init=False, repr=False)
    _adam: dict[str, Tensor] = dataclasses.field(default_factory=dict, init=False, repr=False)

    needs_gram: ClassVar[bool] = False
    loss_based: ClassVar[bool] = True
    requires_positive_losses: ClassVar[bool] = True
    scale_invariant: ClassVar[bool] = True
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"famo: lr must be positive, got {self.lr}")
        if not self.gamma >= 0:
            raise ValueError(f"famo: gamma must be non-negative, got {self.gamma}")
        if not self.eps > 0:
            raise ValueError(f"famo: eps must be positive, got {self.eps}")

    def _task_logits(self, losses: Tensor) -> Tensor:
        if self._logits is None or self._logits.shape != losses.shape:
            self._logits = torch.zeros_like(losses)
            self._adam = {}
        return self._logits.to(losses.device)

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        if losses is None:
            raise ValueError("famo weights the task losses: pass them to weights()")
        z = torch.softmax(self._task_logits(losses), dim=0)
        raw = z / (losses.detach() + self.eps)
        return raw / raw.sum()

    def observe(self, losses_before: Tensor, losses_after: Tensor) -> None:
        logits = self._task_logits(losses_before)
        z = torch.softmax(logits, dim=0)
        decrease = torch.log(losses_before + self.eps) - torch.log(losses_after + self.eps)
        # A step whose losses were not finite teaches nothing: the logits and the moments stay
        # as they were (decided on the device, with no host sync).
        finite = torch.isfinite(decrease).all()
        keep = finite.to(logits.dtype)
        decrease = torch.where(finite, decrease, 0.0)
        # (∂z/∂ξ)ᵀ δ for the softmax, plus Adam-style L2 weight decay
        gradient = z * (decrease - (z * decrease).sum()) + self.gamma * logits
        beta1, beta2 = self.betas
        if not self._adam:
            self._adam = {
                "step": torch.zeros((), dtype=logits.dtype, device=logits.device),
                "m": torch.zeros_like(logits),
                "v": torch.zeros_like(logits),
            }
        state = self._adam
        state["step"] += keep
        state["m"].lerp_(gradient, (1 - beta1) * keep)
        state["v"].lerp_(gradient.square(), (1 - beta2) * keep)
        step = state["step"].clamp_min(1)
        m_hat = state["m"] / (1 - beta1**step)
        v_hat = state["v"] / (1 - beta2**step)
        self._logits = logits - keep * self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def reset(self) -> None:
        self._logits, self._adam = None, {}

    def state_dict(self) -> dict[str, Any]:
        if self._logits is None:
            return {}
        return {"logits": self._logits, **{f"adam_{k}": v for k, v in self._adam.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if state:
            self._logits = state["logits"]
            self._adam = {k.removeprefix("adam_"): v for k, v in state.items() if k != "logits"}
