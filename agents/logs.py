"""What MTSAC writes to SB3's logger: the training statistics and conflict measures gathered on
the device since the last dump, skipped updates, and the rates of environment steps and updates.
"""

from __future__ import annotations

import time
from typing import Any


class TrainingLogs:
    """Mixin for MTSAC: SB3's ``learn`` and ``dump_logs`` with the agent's own scalars."""

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int | None = None,
        tb_log_name: str = "MTSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> Any:
        """SB3's ``learn``; logs are written once per round of episodes by default."""
        interval = log_interval or self.n_envs
        # rates from here: a resumed run has steps and updates behind it, not in this process
        steps = 0 if reset_num_timesteps else self.num_timesteps
        self._last_dump = (time.perf_counter(), steps, self._n_updates)
        return super().learn(
            total_timesteps, callback, interval, tb_log_name, reset_num_timesteps, progress_bar
        )

    def dump_logs(self) -> None:
        means = self.stats.pop() | self.critic_conflicts.means() | self.actor_conflicts.means()
        skipped = {f"train/skipped_updates/{n}": c for n, c in self.skipped_updates.items()}
        if self.reset_every:
            skipped["train/resets"] = self._n_updates // self.reset_every
        for key, value in (means | skipped).items():
            self.logger.record(key, value)
        now, steps, updates = time.perf_counter(), self.num_timesteps, self._n_updates
        last_time, last_steps, last_updates = self._last_dump
        elapsed = max(now - last_time, 1e-9)
        if steps > last_steps:
            self.logger.record("time/env_steps_per_s", (steps - last_steps) / elapsed)
            self.logger.record("time/updates_per_s", (updates - last_updates) / elapsed)
        self._last_dump = (now, steps, updates)
        super().dump_logs()

    def record_pairwise_conflicts(self) -> None:
        """Log the mean cosine of every task pair since the last call, as ``grad/<net>/cos/a/b``
        (the evaluation callback does, at every evaluation)."""
        for recorder in (self.critic_conflicts, self.actor_conflicts):
            for key, value in recorder.pairwise_means().items():
                self.logger.record(key, value)
