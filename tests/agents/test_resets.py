"""Resets (agent.reset_every): the actor's and the critics' weights drawn afresh as a new agent
draws them, their optimizers' moments zeroed, and everything else kept."""

import copy
import csv

import pytest
import torch
from stable_baselines3.common.logger import configure

from tests.agents.test_mtsac import make_model


def test_a_reset_draws_the_networks_afresh_and_zeroes_their_moments(monkeypatch, tmp_path):
    model = make_model(reset_every=5)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    drawn = {}
    real_reset = type(model).reset_networks

    def reset(self):
        drawn["rng"] = torch.get_rng_state()
        drawn["log_alpha"] = self.log_alpha.detach().clone()
        drawn["buffer"] = self.replay_buffer.pos
        real_reset(self)

    monkeypatch.setattr(type(model), "reset_networks", reset)
    model.learn(72)  # 60 env steps (20 vector steps) of warm-up, then updates 1-4
    assert "rng" not in drawn
    before = copy.deepcopy(model.policy.state_dict())
    model.learn(3, reset_num_timesteps=False)  # update 5: the reset
    assert model._n_updates == 5 and "rng" in drawn
    torch.set_rng_state(drawn["rng"])
    fresh = model.policy_class(
        model.observation_space, model.action_space, model.lr_schedule, **model.policy_kwargs
    )
    for name, value in fresh.state_dict().items():
        assert torch.equal(model.policy.state_dict()[name], value), name
        assert not torch.equal(before[name], value), name
    for network in (model.actor, model.critic):
        for state in network.optimizer.state.values():
            assert all(not value.any() for value in state.values())
    assert torch.equal(model.log_alpha, drawn["log_alpha"])  # the temperatures are kept
    assert model.replay_buffer.pos == drawn["buffer"]
    model.learn(9, reset_num_timesteps=False)  # and training goes on from the fresh weights
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    model.dump_logs()
    logged = list(csv.DictReader((tmp_path / "progress.csv").open()))
    assert logged[-1]["train/resets"] == "1"


@pytest.mark.parametrize("every", [0, -3, 2.5])
def test_a_reset_interval_that_is_no_positive_count_is_refused(every):
    with pytest.raises(
        ValueError, match=f"reset_every must be a positive number of updates, got {every}"
    ):
        make_model(reset_every=every)
