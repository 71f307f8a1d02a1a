import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv
from tests.envs.conftest import MT10_SHORT

EPISODE_LENGTH = 20
SHORT_REACH = BenchmarkSpec("mt1", "reach-v3", episode_length=EPISODE_LENGTH)
ZERO_ACTION = np.zeros((1, 4), dtype=np.float32)


@pytest.fixture
def reach_env():
    env = MetaWorldVecEnv(make_vector_env(SHORT_REACH, seed=0))
    yield env
    env.close()


def run_one_episode(env):
    """Reset, then step one whole episode: (first obs, [(obs, rewards, dones, infos)] per step)."""
    first_obs = env.reset()
    steps = [env.step(ZERO_ACTION) for _ in range(EPISODE_LENGTH)]
    return first_obs, steps


def test_adapter_is_an_sb3_vec_env_with_float32_observations(reach_env):
    assert isinstance(reach_env, VecEnv)
    assert reach_env.task_names == ["reach-v3"]
    assert reach_env.observation_space.dtype == np.float32
    assert reach_env.observation_space.shape == (40,)
    obs = reach_env.reset()
    assert obs.shape == (1, 40)
    assert obs.dtype == np.float32


def test_truncation_returns_reset_obs_and_terminal_observation(reach_env):
    first_obs, steps = run_one_episode(reach_env)
    for _, _, dones, infos in steps[:-1]:
        assert not dones[0]
        assert "terminal_observation" not in infos[0]
        assert "success" in infos[0]  # per-step info is copied
    obs, rewards, dones, infos = steps[-1]
    assert obs.dtype == np.float32
    assert rewards.dtype == np.float32
    assert dones.dtype == bool
    assert dones[0]
    info = infos[0]
    assert info["TimeLimit.truncated"] is True
    terminal = info["terminal_observation"]
    assert terminal.dtype == np.float32
    assert not np.array_equal(terminal, obs[0])
    # the terminal obs continues the episode; the returned obs starts a new one (new goal, and
    # the hand back at its initial position)
    np.testing.assert_array_equal(terminal[36:39], steps[-2][0][0, 36:39])
    np.testing.assert_allclose(obs[0, :3], first_obs[0, :3], atol=0.02)
    assert info["episode"]["l"] == EPISODE_LENGTH
    assert info["episode"]["r"] == pytest.approx(sum(float(step[1][0]) for step in steps))
    assert info["is_success"] is False


def test_replay_buffer_bootstraps_truncated_transitions(reach_env):
    buffer = ReplayBuffer(
        100,
        reach_env.observation_space,
        reach_env.action_space,
        device="cpu",
        handle_timeout_termination=True,
    )
    last_obs = reach_env.reset()
    for _ in range(EPISODE_LENGTH):
        obs, rewards, dones, infos = reach_env.step(ZERO_ACTION)
        # as SB3's OffPolicyAlgorithm._store_transition does
        next_obs = obs.copy()
        if dones[0]:
            next_obs[0] = infos[0]["terminal_observation"]
        buffer.add(last_obs, next_obs, ZERO_ACTION, rewards, dones, infos)
        last_obs = obs
    last = EPISODE_LENGTH - 1
    assert buffer.dones[last, 0] == 1.0
    assert buffer.timeouts[last, 0] == 1.0
    assert not buffer.dones[:last].any()
    np.testing.assert_array_equal(buffer.next_observations[last, 0], next_obs[0])
    samples = buffer._get_samples(np.array([last, 0]))
    # SAC's target uses (1 - dones): 0 here means the time-out transition bootstraps
    np.testing.assert_array_equal(samples.dones.numpy().ravel(), [0.0, 0.0])


class SucceedsOnceEnv(gym.Env):
    """Reports success at step 2 only and truncates at step 4 (Meta-World's is_success is
    per step, so the adapter must remember it)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
    task_name = "SawyerReachEnvV3"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, self.t / 10, dtype=np.float32)
        return obs, 1.0, False, self.t == 4, {"success": float(self.t == 2)}


def test_is_success_means_success_at_any_step_of_the_episode():
    env = MetaWorldVecEnv(
        gym.vector.SyncVectorEnv(
            [SucceedsOnceEnv, SucceedsOnceEnv],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    )
    env.reset()
    actions = np.zeros((2, 4), dtype=np.float32)
    for _ in range(2):  # two episodes: the flag is reset between them
        infos = [env.step(actions)[3] for _ in range(4)]
        assert [info[0]["success"] for info in infos] == [0.0, 1.0, 0.0, 0.0]
        assert all(info["is_success"] is True for info in infos[-1])
        assert all("is_success" not in info for info in infos[0])
    env.close()


def test_reset_seeds_are_ignored_by_metaworld(reach_env):
    other = MetaWorldVecEnv(make_vector_env(SHORT_REACH, seed=0))
    other.seed(123)  # what SB3's set_random_seed does; only the build seed counts
    # compare the next episode's start: its goal is drawn after the seeded reset
    _, steps = run_one_episode(reach_env)
    _, other_steps = run_one_episode(other)
    np.testing.assert_array_equal(other_steps[-1][0], steps[-1][0])
    other.close()


def test_next_step_autoreset_is_rejected():
    vector_env = gym.vector.SyncVectorEnv([SucceedsOnceEnv])
    with pytest.raises(ValueError, match="SAME_STEP"):
        MetaWorldVecEnv(vector_env)
    vector_env.close()


def test_attribute_and_method_forwarding(reach_env):
    assert reach_env.get_attr("terminate_on_success") == [False]
    reach_env.env_method("toggle_terminate_on_success", True)
    assert reach_env.get_attr("terminate_on_success", indices=[0]) == [True]
    reach_env.set_attr("terminate_on_success", False, indices=0)
    assert reach_env.get_attr("terminate_on_success") == [False]
    assert reach_env.env_is_wrapped(gym.wrappers.TimeLimit) == [True]
    assert reach_env.env_is_wrapped(Monitor) == [False]
    assert reach_env.seed(5) == [5]  # SB3-compatible; Meta-World ignores reset seeds


def test_adapter_works_on_mt10(mt10_env):
    env = MetaWorldVecEnv(mt10_env)  # not closed: the session fixture owns the env
    assert env.task_names == MT10_SHORT.tasks
    obs = env.reset()
    assert obs.shape == (10, 49)
    for _ in range(MT10_SHORT.episode_length):
        *_, dones, infos = env.step(np.zeros((10, 4), dtype=np.float32))
    assert dones.all()
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert env.get_attr("task_name", indices=[0, 9]) == [
        "SawyerReachEnvV3",
        "SawyerWindowCloseEnvV3",
    ]
    assert env.env_method("toggle_terminate_on_success", False, indices=[3]) == [None]


def test_adapter_works_on_async_vector_env():
    spec = BenchmarkSpec("mt1", "reach-v3", episode_length=5, vector_strategy="async")
    env = MetaWorldVecEnv(make_vector_env(spec, seed=0))
    assert isinstance(env.vector_env, gym.vector.AsyncVectorEnv)
    env.reset()
    for _ in range(5):
        *_, dones, infos = env.step(ZERO_ACTION)
    assert dones[0]
    assert infos[0]["terminal_observation"].shape == (40,)
    assert infos[0]["TimeLimit.truncated"] is True
    assert env.task_names == ["reach-v3"]
    assert env.env_is_wrapped(Monitor) == [False]
    env.close()


def test_sb3_sac_learns_on_the_adapter(reach_env):
    model = SAC(
        "MlpPolicy",
        reach_env,
        learning_starts=100,
        batch_size=32,
        buffer_size=1_000,
        policy_kwargs={"net_arch": [32]},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=300)
    assert model.num_timesteps == 300
    assert len(model.ep_success_buffer) == 300 // EPISODE_LENGTH
    assert model.replay_buffer.timeouts.sum() == 300 // EPISODE_LENGTH
    action, _ = model.predict(reach_env.reset(), deterministic=True)
    assert action.shape == (1, 4)
