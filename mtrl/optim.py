"""AdaTask: Adam with separate moments for each task (Yang et al., AAAI 2023).

Adam's second moment mixes every task's gradient, so a parameter's learning rate is set by the
task with the largest gradients. AdaTask keeps Adam's moments per task for the shared
parameters and adds the tasks' normalised steps:

    θ ← θ − lr · Σ_t m̂_t / (√v̂_t + ε)

where ``m_t``, ``v_t`` are the moments of task t's gradient. With an aggregation method the
per-task gradients are the method's per-task contributions ``w_t g_t`` to its update ``Jᵀw``.
Parameters given no per-task gradients (task-specific heads, for instance) take a plain Adam
step on ``.grad``. With one task, AdaTask is Adam.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class AdaTask(torch.optim.Optimizer):
    """Per-task Adam moments for the parameters that :meth:`set_task_gradients` feeds."""

    def __init__(
        self,
        params: Iterable[Tensor],
        num_tasks: int,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if num_tasks < 1:
            raise ValueError(f"adatask: num_tasks must be at least 1, got {num_tasks}")
        if lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"adatask: invalid lr={lr}, betas={betas} or eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        self.num_tasks = num_tasks
        self._task_gradients: dict[Tensor, Tensor] = {}

    def set_task_gradients(self, gradients: dict[Tensor, Tensor]) -> None:
        """For the next :meth:`step`: parameter → its per-task gradients ``[K, *param.shape]``."""
        for param, grads in gradients.items():
            if grads.shape != (self.num_tasks, *param.shape):
                raise ValueError(
                    f"adatask: expected per-task gradients of shape "
                    f"{(self.num_tasks, *param.shape)}, got {tuple(grads.shape)}"
                )
        self._task_gradients = dict(gradients)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by the caller, as for torch's fused Adam: a step with found_inf = 1 changes
        # nothing, decided on the device.
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                grads = self._task_gradients.get(param)
                if grads is None:
                    if param.grad is None:
                        continue
                    grads = param.grad.unsqueeze(0)
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64, device=param.device)
                    state["exp_avg"] = torch.zeros_like(grads)
                    state["exp_avg_sq"] = torch.zeros_like(grads)
                keep = torch.ones((), device=grads.device)
                if found_inf is not None:
                    keep = 1 - found_inf.to(grads.device)
                    grads = torch.where(keep > 0, grads, 0.0)
                state["step"] += keep.to(torch.float64)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grads, (1 - beta1) * keep)
                exp_avg_sq.lerp_(grads * grads, (1 - beta2) * keep)
                step = state["step"].clamp_min(1)
                first = exp_avg / (1 - beta1**step)
                second = exp_avg_sq / (1 - beta2**step)
                update = (first / (second.sqrt() + group["eps"])).sum(dim=0)
                param.sub_(group["lr"] * keep * update.to(param.dtype))
        self._task_gradients = {}
        return loss
