"""The agent settings the JAX reference runs change: the temperatures' own learning rate, Q
predictions clipped with the targets, and each task's losses weighted by its temperature."""

import math

import pytest
import torch

from mtrl.agents.mtsac import (
    MTSAC,
    actor_task_loss,
    critic_task_loss,
    temperature_task_weights,
    weighted_by_task,
)
from mtrl.jacobian import per_task_gradients, per_task_gradients_loop
from tests.agents.point_tasks import point_tasks
from tests.agents.test_mtsac import TASKS, make_model

NEW_KEYS = ("alpha_learning_rate", "clip_q_predictions", "task_loss_weights")


@pytest.fixture(scope="module")
def warmed():
    """A model whose buffer holds random-action transitions, not yet updated."""
    model = make_model(aggregator="mean")
    model.learn(60)  # learning_starts=60: no update yet
    assert model._n_updates == 0
    return model


def variant(model: MTSAC, **changes) -> MTSAC:
    """``model`` rebuilt from its checkpoint with some constructor arguments changed."""
    state = model.checkpoint_state()
    state["hyperparameters"].update(changes)
    return MTSAC.from_state(state, point_tasks(TASKS), device="cpu")


def first_temperature_step(model: MTSAC, batch) -> torch.Tensor:
    before = model.log_alpha.detach().clone()
    model.gradient_step(batch)
    return (model.log_alpha.detach() - before).abs()


@pytest.mark.parametrize("alpha_learning_rate", [None, 1e-4])
def test_the_temperatures_learn_at_their_own_rate(alpha_learning_rate):
    model = make_model(learning_rate=3e-4, alpha_learning_rate=alpha_learning_rate)
    model.learn(60)  # no update yet
    batch = model.replay_buffer.sample_tasks(8)
    # Adam's first step moves each parameter by its learning rate (the gradient dwarfs eps).
    rate = alpha_learning_rate or 3e-4
    torch.testing.assert_close(
        first_temperature_step(model, batch), torch.full((TASKS,), rate), rtol=1e-2, atol=0
    )
    model.learn(90)  # SB3 sets the rates before each round of updates
    assert model.alpha_optimizer.param_groups[0]["lr"] == pytest.approx(rate)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_the_temperatures_rate_is_kept_by_a_checkpoint(tmp_path):
    model = make_model(alpha_learning_rate=1e-4, max_q_value=100.0, clip_q_predictions=True)
    model.learn(90)
    loaded = MTSAC.load(model.save(tmp_path / "m.pt"), env=point_tasks(TASKS))
    assert (loaded.alpha_learning_rate, loaded.clip_q_predictions) == (1e-4, True)
    loaded.learn(60)
    assert loaded.alpha_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_a_checkpoint_from_before_the_keys_keeps_its_behaviour(warmed):
    state = warmed.checkpoint_state(include_replay_buffer=False)
    for key in NEW_KEYS:
        del state["hyperparameters"][key]
    loaded = MTSAC.from_state(state, device="cpu")
    assert loaded.alpha_learning_rate is None and not loaded.clip_q_predictions
    assert loaded.task_loss_weights == "none"
    assert loaded.alpha_optimizer.param_groups[0]["lr"] == warmed.learning_rate


def test_clipped_predictions_past_the_bound_give_the_critic_no_gradient(warmed):
    batch = warmed.replay_buffer.sample_tasks(8)
    with torch.no_grad():
        q_values = warmed.critic(batch.observations, batch.actions, "grouped")
    bound = 0.5 * q_values.abs().min().item()  # every prediction lies past it
    gradients = {}
    for clip in (False, True):
        model = variant(warmed, max_q_value=bound, clip_q_predictions=clip)
        critic = model.gradient_step(batch)[0]
        gradients[clip] = [p.grad for p in model.critic.parameters() if p.grad is not None]
        if clip:
            # the loss is that of the bound itself against the (also clipped) targets
            assert torch.all(critic.losses > 0)
    assert gradients[True] and all(torch.all(g == 0) for g in gradients[True])
    assert any(g.abs().sum() > 0 for g in gradients[False])  # the targets alone were clipped


def test_clipped_predictions_inside_the_bound_change_nothing(warmed):
    batch = warmed.replay_buffer.sample_tasks(8)
    params = dict(warmed.critic.named_parameters())
    inputs = (batch.observations, batch.actions, batch.rewards)
    plain = critic_task_loss(params, *inputs, warmed.critic, "grouped")[0]
    clipped = critic_task_loss(params, *inputs, warmed.critic, "grouped", max_q_value=1e6)[0]
    torch.testing.assert_close(clipped, plain, rtol=0, atol=0)


def test_temperature_weights_are_k_softmax_of_minus_log_alpha_without_gradient():
    log_alpha = torch.tensor([-1.0, 0.0, 0.5, 2.0], requires_grad=True)
    weights = temperature_task_weights(log_alpha)
    exponentials = [math.exp(-value) for value in (-1.0, 0.0, 0.5, 2.0)]
    expected = torch.tensor([4 * e / sum(exponentials) for e in exponentials])
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad and weights.grad_fn is None
    assert weights.sum().item() == pytest.approx(4.0)
    # equal temperatures leave every task's losses as they are
    torch.testing.assert_close(temperature_task_weights(torch.full((5,), 0.3)), torch.ones(5))


@pytest.mark.parametrize("gradients", [per_task_gradients, per_task_gradients_loop])
def test_weighted_losses_scale_each_tasks_loss_and_gradient(warmed, gradients):
    batch = warmed.replay_buffer.sample_tasks(8)
    weights = torch.tensor([0.5, 1.0, 1.5])
    noise = torch.randn_like(batch.actions)
    alpha = torch.tensor([0.1, 0.2, 0.3])
    frozen = {name: p.detach() for name, p in warmed.critic.named_parameters()}
    cases = [
        (warmed.critic, critic_task_loss, (batch.observations, batch.actions, batch.rewards)),
        (warmed.actor, actor_task_loss, (batch.observations, noise, alpha)),
    ]
    shared = {warmed.critic: (warmed.critic,), warmed.actor: (warmed.actor, warmed.critic, frozen)}
    for network, loss_fn, inputs in cases:
        params = dict(network.named_parameters())
        plain, plain_aux = gradients(loss_fn, params, inputs, shared[network])
        weighted, aux = gradients(
            weighted_by_task(loss_fn, task_inputs=3), params, (*inputs, weights), shared[network]
        )
        plain_parts = plain_aux if isinstance(plain_aux, tuple) else (plain_aux,)
        parts = aux if isinstance(aux, tuple) else (aux,)
        torch.testing.assert_close(parts[0], weights * plain_parts[0])  # the losses
        for part, plain_part in zip(parts[1:], plain_parts[1:], strict=True):
            torch.testing.assert_close(part, plain_part)  # the actor's log-probabilities
        for name, gradient in weighted.items():
            scale = weights.view(-1, *[1] * (gradient.dim() - 1))
            torch.testing.assert_close(gradient, scale * plain[name], rtol=1e-5, atol=1e-7)


def test_the_agent_weights_critic_and_actor_losses_and_not_the_temperatures(warmed, monkeypatch):
    batch = warmed.replay_buffer.sample_tasks(8)
    log_alpha = torch.tensor([-1.0, 0.0, 1.0])
    steps, temperatures = {}, {}
    for weighting in ("none", "temperature"):
        model = variant(warmed, task_loss_weights=weighting)
        with torch.no_grad():
            model.log_alpha.copy_(log_alpha)
        # a frozen critic, so that both actors see the same one
        monkeypatch.setattr(model.critic.optimizer, "step", lambda: None)
        torch.manual_seed(1)
        steps[weighting] = model.gradient_step(batch)
        temperatures[weighting] = model.log_alpha.detach().clone()
    weights = 3 * torch.softmax(-log_alpha, dim=0)
    (plain_critic, plain_actor, plain_log_probs) = steps["none"]
    (critic, actor, log_probs) = steps["temperature"]
    torch.testing.assert_close(critic.losses, weights * plain_critic.losses)
    torch.testing.assert_close(actor.losses, weights * plain_actor.losses)
    torch.testing.assert_close(log_probs, plain_log_probs)
    torch.testing.assert_close(temperatures["temperature"], temperatures["none"])


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="clip_q_predictions clips to ±max_q_value, which is None"):
        make_model(clip_q_predictions=True)
    with pytest.raises(ValueError, match="task_loss_weights='softmax'; valid: none, temperature"):
        make_model(task_loss_weights="softmax")
    with pytest.raises(ValueError, match="alpha_learning_rate must be positive or None, got 0"):
        make_model(alpha_learning_rate=0.0)
