"""Updates that run while the environments simulate the next step.

SB3 asks for the updates after each step (``train``). With the sub-environments in worker
processes (:class:`mtrl.envs.MetaWorldVecEnv` with async stepping), the main process would wait
idle while they simulate; an overlapped model keeps the updates pending instead and runs them
from the env's :attr:`~mtrl.envs.MetaWorldVecEnv.during_step` hook, while the workers simulate
the next step. The updates see the same data as without the overlap; the acting policy lags one
update behind: the action of step t+1 comes from the policy before the updates asked for after
step t.
"""

from __future__ import annotations

from typing import Any


class OverlappedUpdates:
    """Mixin for an SB3 off-policy algorithm whose ``_train(gradient_steps, batch_size)`` does
    the updates (what SB3's ``train`` does)."""

    overlap_updates: bool
    pending_updates: int

    def _setup_overlap(self, overlap_updates: bool | None) -> None:
        """``None``: overlap when the env steps in worker processes."""
        env = self.env
        if overlap_updates is None:
            overlap_updates = bool(getattr(env, "steps_in_workers", False))
        elif overlap_updates and env is not None and not hasattr(env, "during_step"):
            raise ValueError(
                "overlap_updates=True needs an env that runs work while it steps "
                f"(mtrl.envs.MetaWorldVecEnv), got {type(env).__name__}"
            )
        self.overlap_updates = overlap_updates
        self.pending_updates = 0  # asked for after the last step, to run during the next one

    def train(self, gradient_steps: int, batch_size: int) -> None:
        if self.overlap_updates:
            self.pending_updates += gradient_steps
            return
        self._train(gradient_steps, batch_size)

    def _run_pending_updates(self) -> None:
        steps, self.pending_updates = self.pending_updates, 0
        if steps:
            self._train(steps, self.batch_size)
            self.policy.set_training_mode(False)  # the policy acts next

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        if self.overlap_updates:
            self.env.during_step = self._run_pending_updates
        return super().learn(*args, **kwargs)
