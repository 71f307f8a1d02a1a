"""Step the environments on a worker thread while the learner trains on the caller's thread.

Off-policy training alternates a vector step of the environments with gradient steps. Neither
needs the other's result at once: the update after env step t reads the replay buffer up to
t, and the actions for step t + 1 are already chosen when step t + 1 begins. So the update can
run during the next env step. MuJoCo's physics releases the GIL and torch's kernels do too, so
the two overlap on separate cores; the cost is that the policy acting at step t + 1 has one
update fewer than it would otherwise have had.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class StepWhileTraining(VecEnvWrapper):
    """A ``VecEnv`` whose ``step`` runs ``during()`` on the calling thread while the wrapped
    environments step on a worker thread; it returns when both are done.

    An exception from either side is raised after both have finished, so the worker never keeps
    running behind the caller's back.
    """

    def __init__(self, venv: VecEnv, during: Callable[[], None]) -> None:
        super().__init__(venv)
        self.during = during
        self._step: Future | None = None

    def step_async(self, actions: np.ndarray) -> None:
        # A thread per step (a few hundred microseconds, against ~100 ms of update) keeps no
        # live thread in the model between steps, so that it can still be copied.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-step")
        self._step = worker.submit(self.venv.step, actions)
        worker.shutdown(wait=False)  # the thread ends with the step

    def step_wait(self) -> VecEnvStepReturn:
        step, self._step = self._step, None
        if step is None:
            raise RuntimeError("step_wait called without step_async")
        try:
            self.during()
        finally:
            result = step.result()
        return result

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def close(self) -> None:
        self.venv.close()
