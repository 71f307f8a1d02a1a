"""Meta-World benchmarks (MT1, MT10, MT25, MT50) as gymnasium vector envs, one sub-env per task.

Everything is built through Meta-World's own gymnasium registry
(``gym.make_vec("Meta-World/...")``); this module only picks the protocol (reward version, goal
mode, episode length) and checks the user's choices before any environment is built.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from functools import partial

import gymnasium as gym
import metaworld  # noqa: F401  (registers the "Meta-World/..." ids with gymnasium)
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3, MT25_V3

BENCHMARKS = ("mt1", "mt10", "mt25", "mt50")
# The task sets of the multi-task benchmarks, in Meta-World's (one-hot) order.
TASK_SETS = {"mt10": MT10_V3, "mt25": MT25_V3, "mt50": ALL_V3_ENVIRONMENTS}
REWARD_VERSIONS = ("v1", "v2")
GOAL_MODES = ("resample", "fixed")
VECTOR_STRATEGIES = ("sync", "async")
# Cores a run needs before its environments get worker processes of their own: with fewer, the
# workers and the update contend for the same cores and both slow down.
ASYNC_FROM_CORES = 3

# Meta-World's own horizon (SawyerXYZEnv.max_path_length): the raw env truncates at 500 steps
# whatever TimeLimit asks for, so a longer episode cannot be honoured.
MAX_EPISODE_LENGTH = 500
# Goals per task that Meta-World draws at construction. Always passed explicitly: Meta-World keeps
# the last `num_goals` it was given in a module global and silently reuses it for later envs.
NUM_GOALS = 50

# The "corner*" cameras' frames have their up axis pointing down (rolled by 180°), so their images
# come out upside down; a 180° rotation (not a vertical flip, which would mirror them) fixes them.
ROLLED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})


def _names(values) -> str:
    return ", ".join(repr(v) for v in values)


def task_names(benchmark: str, task: str | None = None) -> list[str]:
    """Task names of a benchmark in Meta-World's order, which is also the one-hot index order."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid benchmarks: {_names(BENCHMARKS)}")
    if benchmark == "mt1":
        if task is None:
            raise ValueError(
                f"benchmark 'mt1' needs a task; valid tasks: {_names(ALL_V3_ENVIRONMENTS)}"
            )
        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {_names(ALL_V3_ENVIRONMENTS)}")
        return [task]
    if task is not None:
        raise ValueError(
            f"benchmark {benchmark!r} has a fixed task set, so task={task!r} must not be given "
            "(a single task is benchmark 'mt1')"
        )
    return list(TASK_SETS[benchmark])


def available_cores() -> int:
    """The CPU cores this process may run on (a cluster job's share, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_vector_strategy(jobs: int = 1) -> str:
    """``"async"`` where each of ``jobs`` runs sharing this machine has at least
    :data:`ASYNC_FROM_CORES` cores, else ``"sync"``."""
    return "async" if available_cores() // max(jobs, 1) >= ASYNC_FROM_CORES else "sync"


def _check_choice(field: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{field}={value!r} is not valid; valid values: {_names(valid)}")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark and the protocol it runs under; validated on construction.

    ``goal_mode="resample"`` draws a new goal from the task's 50 at every episode (Meta-World v3's
    default); ``"fixed"`` draws one goal per task at construction and keeps it for the whole run
    (the protocol of the older MT10/MT50 papers).
    """

    name: str
    task: str | None = None
    reward_version: str = "v2"
    goal_mode: str = "resample"
    episode_length: int = MAX_EPISODE_LENGTH
    vector_strategy: str = "sync"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and its valid values."""
        task_names(self.name, self.task)
        _check_choice("reward_version", self.reward_version, REWARD_VERSIONS)
        _check_choice("goal_mode", self.goal_mode, GOAL_MODES)
        _check_choice("vector_strategy", self.vector_strategy, VECTOR_STRATEGIES)
        length = self.episode_length
        if isinstance(length, bool) or not isinstance(length, int):
            raise ValueError(f"episode_length must be an int, got {length!r}")
        if not 1 <= length <= MAX_EPISODE_LENGTH:
            raise ValueError(
                f"episode_length={length} is not valid; it must be in [1, {MAX_EPISODE_LENGTH}] "
                f"(Meta-World truncates every episode at {MAX_EPISODE_LENGTH} steps)"
            )

    @property
    def tasks(self) -> list[str]:
        """Task names, in one-hot index order."""
        return task_names(self.name, self.task)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def protocol(self) -> dict:
        """Plain data describing the protocol, to be recorded next to a run's results."""
        return {
            "benchmark": self.name,
            "tasks": self.tasks,
            "reward_version": self.reward_version,
            "goal_mode": self.goal_mode,
            "episode_length": self.episode_length,
            "one_hot": True,
        }


def _make_single_task_env(**kwargs) -> gym.Env:
    """Meta-World's registered MT1 env, with ``kwargs`` passed to Meta-World through the spec.

    ``gym.make("Meta-World/MT1", max_episode_steps=n)`` would keep ``max_episode_steps`` for
    itself and add an outer TimeLimit that Meta-World's RecordEpisodeStatistics (further in)
    never sees, so short episodes would end without the statistics its evaluation reads.
    """
    spec = dataclasses.replace(gym.spec("Meta-World/MT1"), kwargs=kwargs)
    # No env checker, as in MT10/MT50, whose vector entry point adds none.
    return gym.make(spec, disable_env_checker=True)


def make_vector_env(
    spec: BenchmarkSpec,
    seed: int,
    *,
    render_mode: str | None = None,
    width: int = 480,
    height: int = 480,
    camera_name: str | None = None,
) -> gym.vector.VectorEnv:
    """Build the benchmark as one vector env with one sub-env per task (SAME_STEP autoreset).

    Observations are float32 ``[39 + num_tasks]``: Meta-World's 39 values then the task's one-hot
    (size 1 for mt1). Episodes truncate after ``spec.episode_length`` steps and never terminate on
    success. ``seed`` is the only seed Meta-World honours: it fixes the 50 goals of every task, the
    sequence of goals drawn at resets and the action-space samples; reset seeds are ignored.
    Building draws the goals (50 resets per task), so MT10 takes several seconds and MT50 more.

    With a ``render_mode`` it defaults ``MUJOCO_GL`` to ``egl`` (the headless backend that works
    here). That is early enough even after ``mujoco`` was imported: Meta-World renders through
    gymnasium's MuJoCo renderer, which reads ``MUJOCO_GL`` at the first render; ``mujoco`` reads
    it at import only for its own ``mujoco.Renderer``, which Meta-World does not use.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if render_mode is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")
    kwargs = dict(
        seed=seed,
        use_one_hot=True,
        reward_function_version=spec.reward_version,
        max_episode_steps=spec.episode_length,
        terminate_on_success=False,
        num_goals=NUM_GOALS,
        render_mode=render_mode,
        width=width,
        height=height,
        camera_name=camera_name,
    )
    with warnings.catch_warnings():
        # OneHotWrapper builds its Box from float64 bounds; gymnasium warns about the cast.
        warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32")
        if spec.name == "mt1":
            # MT1 is registered as a single env, so vectorize it here with SAME_STEP autoreset
            # (gymnasium's default NEXT_STEP breaks Meta-World's evaluation).
            vector_class = gym.vector.SyncVectorEnv
            if spec.vector_strategy == "async":
                vector_class = gym.vector.AsyncVectorEnv
            env = vector_class(
                [partial(_make_single_task_env, env_name=spec.task, env_id=0, **kwargs)],
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        else:
            env = gym.make_vec(
                f"Meta-World/{spec.name.upper()}",
                vector_strategy=spec.vector_strategy,
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
                **kwargs,
            )
    if spec.goal_mode == "fixed":
        # Meta-World's own way to pin a task: stop sampling on reset, then sample once. Later
        # resets (SB3 resets when learning starts, evaluation resets too) keep this goal.
        env.call("toggle_sample_tasks_on_reset", False)
        env.call("sample_tasks")
    return env


def upright(frame: np.ndarray, camera_name: str | None) -> np.ndarray:
    """Return a rendered frame the right way up (rotates the "corner*" cameras' frames by 180°)."""
    return frame[::-1, ::-1] if camera_name in ROLLED_CAMERAS else frame


def env_task_names(env: gym.vector.VectorEnv) -> list[str]:
    """Task name of each sub-env of a Meta-World vector env (Meta-World reports class names)."""
    by_class_name = {cls.__name__: name for name, cls in ALL_V3_ENVIRONMENTS.items()}
    return [by_class_name[class_name] for class_name in env.get_attr("task_name")]
