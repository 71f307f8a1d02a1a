"""SB3 callbacks for multi-task runs: evaluation, checkpoints, a progress bar, a clean stop.

Schedules count vector steps (one step of every task's env) from the environment-step counter,
so that a resumed run keeps the schedule of the run it continues. Evaluations and checkpoints
happen between two steps, once the last step's transitions are stored and trained on, so that a
checkpoint holds a state the run passes through and a resumed run continues it exactly.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from mtrl.agents.policies import PolicySnapshot
from mtrl.runs import checkpoint_path, prune_checkpoints

# The run-state key under which a checkpoint keeps the evaluations running when it was written.
RUNNING = "running_evaluations"


class VectorStepCallback(BaseCallback):
    """A callback that fires after every ``every`` vector steps and once more when training
    ends, each time between two steps (see the module's docstring)."""

    def __init__(self, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be at least 1 vector step, got {every}")
        self.every = every
        self.last_fired: int | None = None

    @property
    def vector_step(self) -> int:
        return self.num_timesteps // self.training_env.num_envs

    def _on_training_start(self) -> None:
        # A resumed run starts where its checkpoint was written, after what fired there.
        self.last_fired = self.num_timesteps

    def _on_rollout_start(self) -> None:
        self.num_timesteps = self.model.num_timesteps
        if self.vector_step % self.every == 0 and self.last_fired != self.num_timesteps:
            self._fire()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.num_timesteps = self.model.num_timesteps
        if self.last_fired != self.num_timesteps and self.fire_at_end():
            self._fire()

    def fire_at_end(self) -> bool:
        return True

    def _fire(self) -> None:
        self.last_fired = self.num_timesteps
        self.fire()

    def fire(self) -> None:
        raise NotImplementedError


class EvaluationCallback(VectorStepCallback):
    """Evaluates the deterministic policy and logs success per task, returns and the best so far.

    ``evaluator`` runs the evaluations, inline or in a worker process while training goes on
    (:mod:`mtrl.envs.evaluation`): each gets a snapshot of the policy
    (:class:`mtrl.agents.policies.PolicySnapshot`), and its result is logged at the step the
    snapshot was taken, once it is there. The snapshots of evaluations still running when a
    checkpoint is written go into it (:meth:`running_state`), so that a resumed run evaluates
    them again; at the end of a run, it waits for them.
    """

    def __init__(self, evaluator: Any, every: int) -> None:
        super().__init__(every)
        self.evaluator = evaluator

    def fire_at_end(self) -> bool:
        return not self.model.stop_requested  # an interrupted run stops without a long evaluation

    def fire(self) -> None:
        self.evaluator.submit(self._snapshot(), self.vector_step)
        if hasattr(self.model, "record_pairwise_conflicts"):
            self.model.record_pairwise_conflicts()
            self.logger.dump(self.num_timesteps)
        self._log(self.evaluator.finished())

    def _on_training_start(self) -> None:
        super()._on_training_start()
        # those a resumed run's checkpoint was written during
        for saved in self.model.run_state.pop(RUNNING, []):
            snapshot = self._snapshot()
            snapshot.actor.load_state_dict(saved["actor"])
            self.evaluator.submit(snapshot, saved["vector_step"])

    def _on_rollout_start(self) -> None:
        super()._on_rollout_start()
        self._log(self.evaluator.finished())

    def _on_training_end(self) -> None:
        super()._on_training_end()
        if not self.model.stop_requested:  # a stopped run's checkpoint keeps the running ones
            self._log(self.evaluator.finished(wait=True))

    def _snapshot(self) -> PolicySnapshot:
        return PolicySnapshot(
            self.model.policy, self.evaluator.snapshot_device or self.model.device
        )

    def running_state(self) -> list[dict[str, Any]]:
        """The evaluations still running, as plain data: each one's step and policy weights."""
        self._log(self.evaluator.finished())
        return [
            {"vector_step": step, "actor": policy.actor.state_dict()}
            for step, policy in self.evaluator.running()
        ]

    def _log(self, results: list[tuple[int, Any]]) -> None:
        run_state = self.model.run_state
        for vector_step, result in results:
            run_state["last_success"] = result.mean_success
            # for the summary a run prints when it ends
            run_state["last_evaluation"] = {
                "vector_step": vector_step,
                "success": {task: float(rate) for task, rate in result.success.items()},
            }
            best = max(run_state.get("best_success", 0.0), result.mean_success)
            run_state["best_success"] = best
            self.logger.record("eval/success_rate", result.mean_success)
            self.logger.record("eval/best_success_rate", best)
            for task, rate in result.success.items():
                self.logger.record(f"eval/success_rate/{task}", rate)
            for task, value in result.returns.items():
                self.logger.record(f"eval/return/{task}", value)
            self.logger.dump(vector_step * self.training_env.num_envs)


class CheckpointCallback(VectorStepCallback):
    """Writes a full checkpoint (atomically) every ``every`` vector steps and at the end, then
    deletes all but the ``keep`` newest (never the checkpoint of a finished budget)."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        keep: int,
        replay_buffer: bool,
        evaluation: EvaluationCallback | None = None,
    ) -> None:
        super().__init__(every)
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.run_dir, self.keep, self.replay_buffer = Path(run_dir), keep, replay_buffer
        self.evaluation = evaluation  # whose running evaluations a checkpoint keeps

    def fire(self) -> None:
        run_state = self.model.run_state
        if self.evaluation is not None:
            run_state[RUNNING] = self.evaluation.running_state()
        try:
            self.model.save(checkpoint_path(self.run_dir, self.num_timesteps), self.replay_buffer)
        finally:
            run_state.pop(RUNNING, None)
        prune_checkpoints(self.run_dir, self.keep)


class TrainingEta:
    """The time left, from the rate of the update phase alone.

    The random warm-up steps the environments several times faster than the updates that
    follow it, so a rate averaged over both promises an end hours too early. Until the first
    update there is no rate to go by; after it, the rate counts the steps and the time since
    the update phase started in this process (a resumed run's earlier rate is not known).
    """

    def __init__(self, total: int, learning_starts: int, clock: Callable[[], float]) -> None:
        self.total, self.learning_starts, self.clock = total, learning_starts, clock
        self._start: tuple[int, float] | None = None  # (steps, time) the update phase began at

    def warming_up(self, steps: int) -> bool:
        return steps < self.learning_starts

    def seconds_left(self, steps: int) -> float | None:
        """Seconds to the end of the budget, or ``None`` while it cannot be told yet."""
        if self.warming_up(steps):
            return None
        now = self.clock()
        if self._start is None:
            self._start = (steps, now)
            return None
        done, elapsed = steps - self._start[0], now - self._start[1]
        if done <= 0 or elapsed <= 0:
            return None
        return (self.total - steps) * elapsed / done


def format_duration(seconds: float) -> str:
    """``2 h 05 min``, ``4 min 10 s`` or ``12 s``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class ProgressBarCallback(BaseCallback):
    """Environment steps, the phase (random warm-up or training), the time left and the last
    evaluated success rate.

    tqdm's own estimate is left out: it averages the warm-up's rate in (see
    :class:`TrainingEta`).
    """

    BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, total_env_steps: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.total = total_env_steps
        self.clock = clock
        self.bar: tqdm | None = None
        self.eta: TrainingEta | None = None

    def _on_training_start(self) -> None:
        self.eta = TrainingEta(self.total, self.model.learning_starts, self.clock)
        self.bar = tqdm(
            total=self.total,
            initial=self.num_timesteps,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            bar_format=self.BAR,
            # a log file (a cluster job's stderr) gets a line a minute, not ten a second
            mininterval=0.1 if sys.stderr.isatty() else 60,
            delay=1e-9,  # drawn first with the phase below, not without it
        )
        self._describe(self.num_timesteps)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        self._describe(self.model.num_timesteps)
        return True

    def _describe(self, steps: int) -> None:
        if self.eta.warming_up(steps):
            desc = f"warm-up, random actions to {self.eta.learning_starts:,} steps"
            left = "time left known once training starts"
        else:
            desc = "training"
            seconds = self.eta.seconds_left(steps)
            left = "time left: measuring" if seconds is None else f"{format_duration(seconds)} left"
        parts = [left]
        last = self.model.run_state.get("last_success")
        if last is not None:
            parts.append(f"success={last:.2f}")
        postfix = ", ".join(parts)  # tqdm puts the comma before it
        if desc != self.bar.desc or postfix != self.bar.postfix:
            self.bar.desc, self.bar.postfix = desc, postfix

    def _on_training_end(self) -> None:
        self.bar.close()


class GracefulStop(BaseCallback):
    """Turns the first Ctrl-C (or SIGTERM from a cluster) into a stop after the current step.

    Training then ends normally, so the final checkpoint is written; a second Ctrl-C interrupts
    at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.model.stop_requested = True
        print("\nstopping after this step and writing a checkpoint (Ctrl-C again to abort)")

    def _on_training_start(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request)

    def _on_step(self) -> bool:
        return True  # MTSAC stops between two steps once stop_requested is set

    def _on_training_end(self) -> None:
        self.restore()

    def restore(self) -> None:
        """Give the signals back to their earlier handlers (also when training failed)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
