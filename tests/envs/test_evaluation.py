import json

import numpy as np
import pytest
from metaworld.policies import SawyerReachV3Policy

from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.evaluation import EvalResult, evaluate
from mtrl.envs.vec_env import MetaWorldVecEnv
from tests.envs.conftest import MT10_SHORT
from tests.envs.rollouts import count_episodes

SHORT_REACH = BenchmarkSpec("mt1", "reach-v3", episode_length=20)


def zero_policy(obs):
    assert obs.dtype == np.float32
    return np.zeros((len(obs), 4), dtype=np.float32)


def scripted_reach_policy():
    # Meta-World's scripted policies read the 39 Meta-World values, not the one-hot.
    policy = SawyerReachV3Policy()
    return lambda obs: np.stack([policy.get_action(row[:39]) for row in obs])


def test_zero_policy_reports_per_task_rates_and_returns():
    result = evaluate(zero_policy, SHORT_REACH, episodes=3, seed=0)
    assert isinstance(result, EvalResult)
    assert result.episodes == 3
    assert list(result.success) == list(result.returns) == ["reach-v3"]
    success, returns = count_episodes(zero_policy, SHORT_REACH, episodes=3, seed=0)
    assert result.success == success
    assert result.returns == pytest.approx(returns, rel=1e-6)
    assert result.mean_success == pytest.approx(np.mean(list(result.success.values())))
    assert result.returns["reach-v3"] > 0.0  # Meta-World's shaped rewards are positive
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")
def test_scripted_policy_succeeds_on_every_episode():
    # full-length episodes; they end at the first success, as in Meta-World's protocol
    result = evaluate(scripted_reach_policy(), BenchmarkSpec("mt1", "reach-v3"), episodes=5, seed=0)
    assert result.success == {"reach-v3": 1.0}
    assert result.mean_success == 1.0


@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")
def test_the_success_rate_is_the_fraction_of_episodes_that_succeeded():
    # 60 steps let the scripted policy reach some of the goals and not others
    spec = BenchmarkSpec("mt1", "reach-v3", episode_length=60)
    result = evaluate(scripted_reach_policy(), spec, episodes=6, seed=0)
    success, returns = count_episodes(scripted_reach_policy(), spec, episodes=6, seed=0)
    assert 0 < success["reach-v3"] < 1
    assert result.success == success
    assert result.mean_success == success["reach-v3"]
    assert result.returns == pytest.approx(returns, rel=1e-6)


def test_prebuilt_env_is_reused_and_left_open(mt10_env):
    result = evaluate(zero_policy, MT10_SHORT, episodes=1, seed=0, env=mt10_env)
    assert list(result.success) == MT10_SHORT.tasks  # the benchmark's order, not a set's
    assert list(result.returns) == MT10_SHORT.tasks
    assert mt10_env.get_attr("terminate_on_success") == (False,) * 10  # restored
    mt10_env.reset()  # still open


def test_adapter_can_be_passed_as_eval_env():
    env = MetaWorldVecEnv(make_vector_env(SHORT_REACH, seed=1))
    result = evaluate(zero_policy, SHORT_REACH, episodes=2, seed=0, env=env)
    assert list(result.success) == ["reach-v3"]
    env.close()


def test_eval_env_must_run_the_spec_tasks():
    env = make_vector_env(SHORT_REACH, seed=0)
    with pytest.raises(ValueError, match=r"runs tasks \['reach-v3'\].*\['push-v3'\]"):
        evaluate(zero_policy, BenchmarkSpec("mt1", "push-v3"), episodes=1, seed=0, env=env)
    env.close()


@pytest.mark.parametrize("episodes", [0, -1, 1.5, True])
def test_episodes_must_be_a_positive_int(episodes):
    with pytest.raises(ValueError, match="episodes must be an int >= 1"):
        evaluate(zero_policy, SHORT_REACH, episodes=episodes, seed=0)
