import json

import gymnasium as gym
import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT25_V3

import mtrl.envs.benchmarks as benchmarks
from mtrl.envs.benchmarks import BenchmarkSpec, env_task_names, make_vector_env, task_names
from tests.envs.conftest import MT10_SHORT

MT10_TASKS = [
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
]


@pytest.fixture
def no_env_may_be_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an environment was built")

    monkeypatch.setattr(gym, "make_vec", refuse)
    monkeypatch.setattr(gym, "make", refuse)


def test_task_names_follow_metaworld_order():
    assert task_names("mt10") == MT10_TASKS
    assert task_names("mt50") == list(ALL_V3_ENVIRONMENTS)
    assert len(task_names("mt50")) == 50
    assert task_names("mt1", "push-v3") == ["push-v3"]
    mt25 = task_names("mt25")
    assert mt25 == list(MT25_V3) and len(mt25) == 25 and set(MT10_TASKS) < set(mt25)


def test_unknown_benchmark_lists_valid_ones(no_env_may_be_built):
    with pytest.raises(
        ValueError, match=r"unknown benchmark 'mt20'.*'mt1', 'mt10', 'mt25', 'mt50'"
    ):
        BenchmarkSpec("mt20")


def test_mt1_without_task_lists_all_fifty_tasks(no_env_may_be_built):
    with pytest.raises(ValueError, match="needs a task") as error:
        BenchmarkSpec("mt1")
    assert all(repr(name) in str(error.value) for name in ALL_V3_ENVIRONMENTS)


def test_unknown_task_lists_all_fifty_tasks(no_env_may_be_built):
    with pytest.raises(ValueError, match="unknown task 'reach-v2'") as error:
        BenchmarkSpec("mt1", "reach-v2")
    assert all(repr(name) in str(error.value) for name in ALL_V3_ENVIRONMENTS)


def test_task_given_for_mt10_is_an_error(no_env_may_be_built):
    with pytest.raises(ValueError, match="fixed task set"):
        BenchmarkSpec("mt10", "reach-v3")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reward_version", "v3", "reward_version='v3'.*'v1', 'v2'"),
        ("goal_mode", "random", "goal_mode='random'.*'resample', 'fixed'"),
        ("vector_strategy", "ray", "vector_strategy='ray'.*'sync', 'async'"),
        ("episode_length", 0, r"\[1, 500\]"),
        ("episode_length", 501, r"\[1, 500\].*truncates every episode at 500"),
        ("episode_length", 20.0, "must be an int"),
        ("episode_length", True, "must be an int"),
    ],
)
def test_bad_field_values_name_the_valid_ones(no_env_may_be_built, field, value, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkSpec("mt1", "reach-v3", **{field: value})


def test_bad_seed_is_rejected_before_building(no_env_may_be_built):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        make_vector_env(BenchmarkSpec("mt1", "reach-v3"), seed=-1)


def test_protocol_is_plain_data():
    protocol = BenchmarkSpec("mt10", goal_mode="fixed", episode_length=150).protocol()
    assert json.loads(json.dumps(protocol)) == protocol
    assert protocol == {
        "benchmark": "mt10",
        "tasks": MT10_TASKS,
        "reward_version": "v2",
        "goal_mode": "fixed",
        "episode_length": 150,
        "one_hot": True,
    }
    assert BenchmarkSpec("mt50").num_tasks == 50


def test_mt10_has_one_sub_env_per_task_with_one_hot_in_task_order(mt10_env):
    assert mt10_env.num_envs == 10
    assert mt10_env.single_observation_space.shape == (39 + 10,)
    assert env_task_names(mt10_env) == MT10_TASKS == MT10_SHORT.tasks
    obs, _ = mt10_env.reset()
    assert obs.shape == (10, 49)
    assert obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:, 39:], np.eye(10, dtype=np.float32))


def test_mt10_truncates_all_tasks_at_episode_length(mt10_env):
    mt10_env.reset()
    zeros = np.zeros((10, 4), dtype=np.float32)
    for _ in range(MT10_SHORT.episode_length - 1):
        _, _, terminated, truncated, _ = mt10_env.step(zeros)
        assert not truncated.any()
    _, _, terminated, truncated, info = mt10_env.step(zeros)
    assert truncated.all()
    assert not terminated.any()
    assert "final_obs" in info


def test_mt1_is_a_vector_env_with_a_one_hot_of_size_one():
    env = make_vector_env(BenchmarkSpec("mt1", "reach-v3"), seed=0)
    obs, _ = env.reset()
    env.close()
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert obs.shape == (1, 40)
    assert obs.dtype == np.float32
    assert obs[0, 39] == 1.0


def test_num_goals_does_not_leak_from_other_envs():
    # Meta-World keeps the last `num_goals` in a module global; every build must reset it.
    env = gym.make_vec(
        "Meta-World/MT1", env_name="reach-v3", seed=0, num_goals=2, disable_env_checker=True
    )
    env.close()
    env = make_vector_env(BenchmarkSpec("mt1", "reach-v3"), seed=0)
    assert [len(tasks) for tasks in env.get_attr("tasks")] == [benchmarks.NUM_GOALS]
    env.close()


def goals_over_resets(spec, resets=5, seed=0):
    """The goal (obs[36:39]) after creation and after each explicit and automatic reset."""
    env = make_vector_env(spec, seed)
    goals = []
    obs, _ = env.reset()
    goals.append(obs[0, 36:39].copy())
    for _ in range(resets):
        for _ in range(spec.episode_length):  # the last step autoresets
            obs, *_ = env.step(np.zeros((1, 4), dtype=np.float32))
        goals.append(obs[0, 36:39].copy())
        obs, _ = env.reset()  # as SB3 does when learning starts
        goals.append(obs[0, 36:39].copy())
    env.close()
    return np.array(goals)


def test_resample_draws_a_new_goal_every_episode():
    goals = goals_over_resets(BenchmarkSpec("mt1", "reach-v3", episode_length=5))
    assert len(np.unique(goals, axis=0)) > 5


def test_fixed_keeps_one_goal_across_resets():
    goals = goals_over_resets(BenchmarkSpec("mt1", "reach-v3", goal_mode="fixed", episode_length=5))
    np.testing.assert_array_equal(goals, np.broadcast_to(goals[0], goals.shape))


def test_fixed_goal_depends_on_seed_only():
    spec = BenchmarkSpec("mt1", "reach-v3", goal_mode="fixed", episode_length=5)
    first = goals_over_resets(spec, resets=1, seed=3)[0]
    np.testing.assert_array_equal(first, goals_over_resets(spec, resets=1, seed=3)[0])
    assert not np.array_equal(first, goals_over_resets(spec, resets=1, seed=4)[0])


def rollout(seed, actions):
    env = make_vector_env(BenchmarkSpec("mt1", "push-v3", episode_length=20), seed)
    obs, _ = env.reset()
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, *_ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    env.close()
    return np.array(observations), np.array(rewards)


def test_same_seed_and_actions_give_identical_observations():
    actions = np.random.default_rng(0).uniform(-1, 1, (45, 1, 4)).astype(np.float32)
    obs_a, rewards_a = rollout(7, actions)  # 45 steps: two automatic resets
    obs_b, rewards_b = rollout(7, actions)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    obs_c, _ = rollout(8, actions)
    assert not np.array_equal(obs_a, obs_c)


def test_the_reward_version_changes_the_rewards_and_nothing_else():
    actions = np.random.default_rng(0).uniform(-1, 1, size=(15, 1, 4)).astype(np.float32)
    steps = {}
    for version in ("v1", "v2"):
        env = make_vector_env(BenchmarkSpec("mt1", "push-v3", reward_version=version), seed=0)
        first, _ = env.reset()
        steps[version] = [first] + [env.step(action)[:2] for action in actions]
        env.close()
    v1, v2 = steps["v1"], steps["v2"]
    np.testing.assert_array_equal(v1[0], v2[0])  # the same goal and start
    for (obs_1, reward_1), (obs_2, reward_2) in zip(v1[1:], v2[1:], strict=True):
        np.testing.assert_array_equal(obs_1, obs_2)  # the same dynamics
        assert reward_1[0] != pytest.approx(reward_2[0], rel=1e-3)
    # v2's rewards are Meta-World's bounded ones
    assert all(0 <= reward[0] <= 10 for _, reward in v2[1:])
