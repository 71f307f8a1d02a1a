import pytest
import torch

from mtrl.aggregators import FAMO, make_aggregator


def test_weights_follow_the_losses_by_hand():
    famo = FAMO()
    # logits start at 0: z = (½, ½), w ∝ z / ℓ = (½, ¼), normalised to (⅔, ⅓)
    weights = famo.weights(None, torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_logits_move_towards_the_task_whose_loss_fell_least_by_hand():
    famo = FAMO(lr=0.025, gamma=0.01)
    before = torch.tensor([1.0, 2.0], dtype=torch.float64)
    famo.weights(None, before)
    famo.observe(before, torch.tensor([0.5, 2.0], dtype=torch.float64))
    # decrease δ = (log 2, 0); (∂z/∂ξ)ᵀδ = z ⊙ (δ − zᵀδ) = (¼ log 2, −¼ log 2); the logits are 0,
    # so weight decay adds nothing; Adam's first step is lr · sign: ξ = (−0.025, +0.025)
    expected = torch.tensor([-0.025, 0.025], dtype=torch.float64)
    torch.testing.assert_close(famo.state_dict()["logits"], expected, rtol=0, atol=1e-8)
    z = torch.softmax(expected, dim=0)
    weights = famo.weights(None, before)
    torch.testing.assert_close(weights, (z / before) / (z / before).sum())
    assert z[1] > 0.5  # the task that did not improve gains weight


def test_state_round_trip_and_reset():
    famo = FAMO()
    losses = torch.tensor([1.0, 3.0, 2.0])
    famo.weights(None, losses)
    famo.observe(losses, losses * torch.tensor([0.5, 1.0, 0.9]))
    restored = FAMO()
    restored.load_state_dict(famo.state_dict())
    torch.testing.assert_close(restored.weights(None, losses), famo.weights(None, losses))
    famo.reset()
    torch.testing.assert_close(famo.weights(None, losses), (1 / losses) / (1 / losses).sum())


@pytest.mark.parametrize("exponent", [-12, 0, 12])
def test_degenerate_losses_give_finite_weights(exponent):
    famo = FAMO()
    scale = 10.0**exponent
    weights = famo.weights(None, scale * torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64))
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    assert weights[1] > weights[0] > weights[2]  # a zero loss takes the most weight
    single = famo.weights(None, torch.tensor([scale]))
    torch.testing.assert_close(FAMO().weights(None, torch.tensor([scale])), single)
    assert single.item() == pytest.approx(1.0)
    # scaling every loss leaves the weights alone (away from eps)
    losses = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(FAMO().weights(None, losses * 1e6), FAMO().weights(None, losses))


def test_needs_losses_and_no_gram():
    famo = make_aggregator("famo")
    assert famo.loss_based and not famo.needs_gram
    with pytest.raises(ValueError, match="famo weights the task losses"):
        famo.weights(torch.eye(3))


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"gamma": -1.0}, {"eps": 0.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match="famo"):
        make_aggregator("famo", **bad)


def test_a_non_finite_step_teaches_nothing():
    famo = FAMO()
    losses = torch.tensor([1.0, 2.0])
    famo.weights(None, losses)
    famo.observe(losses, torch.tensor([0.5, 2.0]))
    state = {k: v.clone() for k, v in famo.state_dict().items()}
    famo.observe(losses, torch.tensor([float("nan"), 1.0]))
    for key, value in famo.state_dict().items():
        assert torch.equal(value, state[key]), key
