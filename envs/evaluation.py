"""Evaluation by Meta-World's own protocol (``metaworld.evaluation.evaluation``), in this process
or in a worker process while training goes on."""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import gymnasium as gym
import numpy as np
from metaworld.evaluation import evaluation

from mtrl.envs.benchmarks import BenchmarkSpec, env_task_names, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv

PolicyFn = Callable[[np.ndarray], np.ndarray]
"""Maps a float32 observation batch ``[num_tasks, obs_dim]`` to actions ``[num_tasks, 4]``."""


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Success rate and mean episodic return per task, in the benchmark's task order."""

    mean_success: float
    success: dict[str, float]
    returns: dict[str, float]
    episodes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _PolicyAgent:
    """The ``metaworld.evaluation.Agent`` protocol over a stateless policy function."""

    def __init__(self, policy_fn: PolicyFn):
        self.policy_fn = policy_fn

    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        return np.asarray(self.policy_fn(np.asarray(observations, dtype=np.float32)))

    def reset(self, env_mask: np.ndarray) -> None:
        pass  # a feed-forward policy keeps no per-episode state


def evaluation_seed(seed: int, vector_step: int) -> int:
    """The seed of the evaluation after ``vector_step`` steps of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, vector_step]).generate_state(1)[0])


def reseed_goal_draws(env: gym.vector.VectorEnv, seed: int) -> None:
    """Give every sub-env a generator of its own derived from ``seed``.

    Meta-World draws each episode's goal (one of the task's 50) with the env's ``np_random``; it
    ignores ``reset(seed=...)`` (Meta-World#555), so the generator is replaced instead.
    """
    seeds = np.random.SeedSequence(seed).spawn(env.num_envs)
    env.set_attr("np_random", [np.random.default_rng(s) for s in seeds])


def evaluate(
    policy_fn: PolicyFn,
    spec: BenchmarkSpec,
    episodes: int,
    seed: int,
    env: gym.vector.VectorEnv | MetaWorldVecEnv | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes per task and report success rates and mean returns.

    An episode succeeds if ``info["success"]`` became 1 at any step: Meta-World's evaluation
    turns on terminate-on-success for the duration. ``policy_fn`` should be deterministic, e.g.
    ``lambda obs: model.predict(obs, deterministic=True)[0]``.

    ``env`` lets training keep one evaluation env alive (never the training env: it is reset
    here). Its goal draws are then reseeded from ``seed`` first (:func:`reseed_goal_draws`), so
    that the result depends on the policy and ``seed`` alone, not on earlier evaluations: a
    resumed run evaluates as the uninterrupted one would have. Without ``env``, one is built from
    ``seed`` and closed afterwards. In ``goal_mode="fixed"`` the goal comes from the seed the env
    was built with: build it with the training seed to evaluate on the training goals.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an int >= 1, got {episodes!r}")
    if isinstance(env, MetaWorldVecEnv):
        env = env.vector_env
    owns_env = env is None
    if owns_env:
        env = make_vector_env(spec, seed)
    else:
        reseed_goal_draws(env, seed)
    try:
        tasks = spec.tasks
        env_tasks = env_task_names(env)
        if env_tasks != tasks:
            raise ValueError(f"the eval env runs tasks {env_tasks}, but the spec has {tasks}")
        mean_success, _, success, returns = evaluation(
            _PolicyAgent(policy_fn), env, num_episodes=episodes
        )
    finally:
        if owns_env:
            env.close()
    return EvalResult(
        mean_success=float(mean_success),
        success={task: float(success[task]) for task in tasks},
        returns={task: float(np.mean(returns[task])) for task in tasks},
        episodes=episodes,
    )


class InlineEvaluation:
    """Evaluations of a run, each done as it is asked for, on one evaluation env built with the
    run's seed (see :func:`evaluate`).

    ``submit(policy, vector_step)`` evaluates ``policy`` with :func:`evaluation_seed` of that
    step; ``finished()`` returns the ``(vector_step, result)`` pairs done since the last call.
    """

    snapshot_device: str | None = None  # where policy snapshots act; None: the model's device

    def __init__(self, spec: BenchmarkSpec, seed: int, episodes: int) -> None:
        self.spec, self.seed, self.episodes = spec, seed, episodes
        self.env = make_vector_env(spec, seed)
        self.done: list[tuple[int, EvalResult]] = []

    def submit(self, policy: PolicyFn, vector_step: int) -> None:
        seed = evaluation_seed(self.seed, vector_step)
        self.done.append((vector_step, evaluate(policy, self.spec, self.episodes, seed, self.env)))

    def finished(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        done, self.done = self.done, []
        return done

    def running(self) -> list[tuple[int, PolicyFn]]:
        """The ``(vector_step, policy)`` of the evaluations asked for and not yet finished."""
        return []

    def close(self) -> None:
        self.env.close()


_worker_env: dict[str, gym.vector.VectorEnv] = {}


def _start_worker(spec: BenchmarkSpec, seed: int) -> None:
    import torch

    torch.set_num_threads(1)  # the policy is small next to the simulation; the update has the rest
    _worker_env["env"] = make_vector_env(spec, seed)


def _evaluate_in_worker(policy: PolicyFn, spec: BenchmarkSpec, episodes: int, seed: int):
    return evaluate(policy, spec, episodes, seed, env=_worker_env["env"])


class BackgroundEvaluation(InlineEvaluation):
    """:class:`InlineEvaluation` in a worker process, so that training does not wait: the
    evaluations run one after another, in the order asked for, on the worker's own evaluation
    env, built like the inline one. ``policy`` must be picklable (a snapshot of the policy), and
    for the same policy and step the result is the inline one.

    ``finished()`` returns the evaluations done so far, oldest first; ``finished(wait=True)``
    waits for all that were asked for.

    If the worker dies (killed, out of memory), a warning says so, and the evaluations it had not
    finished and all later ones run in this process: their results are the same, only training
    waits for them. Stopping the run for the loss of a helper process would cost more.
    """

    snapshot_device = "cpu"

    def __init__(self, spec: BenchmarkSpec, seed: int, episodes: int) -> None:
        self.spec, self.seed, self.episodes = spec, seed, episodes
        self.pending: collections.deque = collections.deque()
        self.done = []  # evaluations done in this process, once the worker is gone
        # spawn, not fork: a forked child would inherit the parent's threads' locks and CUDA state
        self.pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(spec, seed),
        )

    def submit(self, policy: PolicyFn, vector_step: int) -> None:
        if self.pool is not None:
            seed = evaluation_seed(self.seed, vector_step)
            try:
                future = self.pool.submit(
                    _evaluate_in_worker, policy, self.spec, self.episodes, seed
                )
            except BrokenProcessPool as error:
                self._evaluate_here(error)
            else:
                self.pending.append((vector_step, policy, future))
                return
        super().submit(policy, vector_step)

    def finished(self, wait: bool = False) -> list[tuple[int, EvalResult]]:
        done = []
        while self.pending and (wait or self.pending[0][2].done()):
            vector_step, _, future = self.pending[0]
            try:
                result = future.result()
            except BrokenProcessPool as error:
                self._evaluate_here(error)
                break
            self.pending.popleft()
            done.append((vector_step, result))
        return done + super().finished()

    def _evaluate_here(self, error: BrokenProcessPool) -> None:
        """Go on without the worker: evaluate in this process what it had not finished."""
        warnings.warn(
            f"the background evaluation worker process died ({error}); evaluations go on in "
            "the training process, with the same results, while training waits for them",
            stacklevel=3,
        )
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None
        self.env = make_vector_env(self.spec, self.seed)  # built as the worker built its own
        while self.pending:
            vector_step, policy, future = self.pending.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                # it finished before the worker died
                self.done.append((vector_step, future.result()))
            else:
                super().submit(policy, vector_step)

    def running(self) -> list[tuple[int, PolicyFn]]:
        return [(vector_step, policy) for vector_step, policy, _ in self.pending]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.env.close()
