"""BRC's per-task reward normalisation: hand-computed scales, a reference written here from
naumix/BiggerRegularizedCategorical's jaxrl/normalizer.py on random episodes, and its place in
the update (sampled rewards divided, the buffer's left raw)."""

import numpy as np
import pytest
import torch

from mtrl.agents.reward_normalization import RewardNormalizer, discounted_returns
from tests.agents.test_mtsac import make_model


def test_discounted_returns_by_hand():
    values = discounted_returns([1.0, 0.0, 2.0], gamma=0.5, bootstrap=4.0)
    # 2 + 0.5 * 4 = 4; 0 + 0.5 * 4 = 2; 1 + 0.5 * 2 = 2
    np.testing.assert_allclose(values, [2.0, 2.0, 4.0])


def test_scales_by_hand_at_a_time_out_and_a_termination():
    normalizer = RewardNormalizer(2, gamma=0.5, v_max=10.0, device="cpu")
    no = np.zeros(2, dtype=bool)
    normalizer.observe(np.array([1.0, -3.0]), no, no)
    assert normalizer.rewards == [[1.0], [-3.0]]
    assert torch.isinf(normalizer.scale).all()  # nothing finished: sampled rewards become 0
    normalizer.observe(np.array([3.0, 1.0]), np.array([False, True]), np.array([True, False]))
    # task 0 timed out: bootstrap mean(1, 3) * H = 2 * 2 = 4; returns 3 + 2 = 5, 1 + 2.5 = 3.5
    # task 1 terminated: no bootstrap; returns 1, -3 + 0.5 = -2.5
    np.testing.assert_allclose(normalizer.returns_max, [5.0, 1.0])
    np.testing.assert_allclose(normalizer.returns_min, [3.5, -2.5])
    assert normalizer.rewards == [[], []]
    torch.testing.assert_close(normalizer.scale, torch.tensor([5.0, 2.5]))
    rewards = torch.tensor([[1.0, 2.0], [1.0, -1.0]])
    alphas = torch.tensor([0.1, 0.2])
    # divisor (scale − α H H̄ / 2) / v_max with H = 2, H̄ = −2: (5 + 0.2) / 10, (2.5 + 0.4) / 10
    expected = torch.tensor([[1 / 0.52, 2 / 0.52], [1 / 0.29, -1 / 0.29]])
    torch.testing.assert_close(normalizer.normalize(rewards, alphas, target_entropy=-2.0), expected)
    before = torch.zeros(2, 3)
    assert torch.equal(
        RewardNormalizer(2, 0.5, 10.0, "cpu").normalize(before + 1, alphas, -2.0), before
    )


class ReferenceNormalizer:
    """jaxrl/normalizer.py's RewardNormalizer (the variable-length episodes that train.py
    uses), transcribed in numpy."""

    def __init__(self, num_tasks, discount, target_entropy, v_max=10.0):
        self.returns_min_norm = np.ones(num_tasks) * np.inf
        self.returns_max_norm = np.ones(num_tasks) * -np.inf
        self.effective_horizon = 1 / (1 - discount)
        self.discount, self.target_entropy, self.v_max = discount, target_entropy, v_max
        self.rewards = [[] for _ in range(num_tasks)]

    def update(self, rewards, terms, truncs):
        for task in range(len(rewards)):
            self.rewards[task].append(rewards[task])
            if terms[task] or truncs[task]:
                trajectory = np.array(self.rewards[task])
                bootstrap = trajectory.mean() * self.effective_horizon if truncs[task] else 0.0
                values = np.zeros_like(trajectory)
                for i in reversed(range(trajectory.shape[0])):
                    values[i] = trajectory[i] + self.discount * bootstrap
                    bootstrap = values[i]
                self.returns_min_norm[task] = min(self.returns_min_norm[task], values.min())
                self.returns_max_norm[task] = max(self.returns_max_norm[task], values.max())
                self.rewards[task] = []

    def normalize(self, rewards, task_ids, temperature):
        high, low = self.returns_max_norm, self.returns_min_norm
        denominator = np.where(high > np.abs(low), high, np.abs(low))
        horizon_bonus = temperature * self.effective_horizon * self.target_entropy / 2
        denominator = (denominator - horizon_bonus) / self.v_max
        return rewards / denominator[task_ids]


def test_it_normalises_as_the_reference_on_random_episodes():
    tasks, generator = 4, np.random.default_rng(0)
    ours = RewardNormalizer(tasks, gamma=0.99, v_max=10.0, device="cpu")
    reference = ReferenceNormalizer(tasks, discount=0.99, target_entropy=-2.0)
    for _ in range(600):
        rewards = generator.normal(0.5, 2.0, tasks)
        ends = generator.random(tasks) < 0.03
        truncs = ends & (generator.random(tasks) < 0.5)
        terms = ends & ~truncs
        ours.observe(rewards, terms, truncs)
        reference.update(rewards, terms, truncs)
    np.testing.assert_array_equal(ours.returns_min, reference.returns_min_norm)
    np.testing.assert_array_equal(ours.returns_max, reference.returns_max_norm)
    assert ours.rewards == [list(episode) for episode in reference.rewards]
    rewards = generator.normal(size=(tasks, 5))
    expected = reference.normalize(rewards, np.repeat(np.arange(tasks)[:, None], 5, 1), 0.3)
    got = ours.normalize(torch.tensor(rewards), torch.full((tasks,), 0.3), target_entropy=-2.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


def test_an_update_trains_on_normalised_rewards_and_the_buffer_keeps_the_raw_ones(monkeypatch):
    model = make_model(reward_normalization="per_task", initial_alpha=0.5)
    model.learn(100)  # the point tasks' episodes last 20 steps: several have ended
    normalizer = model.reward_normalizer
    assert torch.isfinite(normalizer.scale).all()
    seen = []
    monkeypatch.setattr(model, "update", seen.append)
    state = model.replay_buffer.generator.get_state()
    model.train(2, model.batch_size)
    model.replay_buffer.generator.set_state(state)
    raw = [model.replay_buffer.sample_tasks(8).rewards for _ in range(2)]
    alphas = model.alphas()
    for batch, rewards in zip(seen, raw, strict=True):
        expected = normalizer.normalize(rewards, alphas, model.target_entropy)
        torch.testing.assert_close(batch.rewards, expected)
        assert not torch.equal(batch.rewards, rewards)
    loaded = type(model).from_state(model.checkpoint_state(False))
    assert loaded.reward_normalizer.rewards == normalizer.rewards
    assert torch.equal(loaded.reward_normalizer.scale, normalizer.scale)


def test_an_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="reward_normalization='popart'; valid: none, per_task"):
        make_model(reward_normalization="popart")
