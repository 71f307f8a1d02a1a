import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl.aggregators import MGDA, SDMGrad, SDMGradOS, aggregate, make_aggregator, normalized_gram
from mtrl.aggregators.mgda import min_norm_weights
from tests.aggregators.helpers import grid_for, restore_through_a_checkpoint
from tests.strategies import jacobians


def sdmgrad_objective(gram: torch.Tensor, w: torch.Tensor, lmbda: float) -> torch.Tensor:
    """½‖g_w + λ g0‖² for rows of weights ``w``."""
    shifted = w + lmbda / gram.shape[0]
    return 0.5 * ((shifted @ gram) * shifted).sum(dim=-1)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(), lmbda=st.sampled_from([10.0, 100.0, 1e4]))
def test_large_lambda_approaches_the_mean_at_rate_one_over_lambda(jacobian, lmbda):
    # d − g0 = (g_w* − g0) / (1 + λ), and g_w* lies in the hull of the gradients
    update, _, _ = aggregate(SDMGrad(lmbda=lmbda), jacobian)
    mean = jacobian.mean(dim=0)
    spread = (jacobian - mean).norm(dim=1).max()
    assert (update - mean).norm() <= spread / (1 + lmbda) * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3, 10)))
def test_the_one_over_lambda_term_points_to_the_least_aligned_task(jacobian):
    """As λ → ∞, w* → argmin_{w∈Δ} g_wᵀg0 (the task i* least aligned with the mean), so
    (1 + λ)(d − g0) → g_i* − g0: the 1/λ rate is exact, not just a bound."""
    alignments = jacobian @ jacobian.mean(dim=0)
    least, second = alignments.sort().values[:2]
    assume(second - least > 1e-3 * alignments.abs().max())  # a unique least-aligned task
    lmbda = 1e7
    update, _, _ = aggregate(SDMGrad(lmbda=lmbda), jacobian)
    mean = jacobian.mean(dim=0)
    expected = jacobian[alignments.argmin()] - mean
    assert ((1 + lmbda) * (update - mean) - expected).norm() <= 1e-3 * expected.norm()


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians())
def test_zero_lambda_is_mgda(jacobian):
    update, _, _ = aggregate(SDMGrad(lmbda=0.0), jacobian)
    expected, _, _ = aggregate(MGDA(), jacobian)
    torch.testing.assert_close(update, expected)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3)), lmbda=st.floats(0.0, 5.0))
def test_no_worse_than_brute_force(jacobian, lmbda):
    gram = normalized_gram(jacobian @ jacobian.T)
    solved = sdmgrad_objective(
        gram,
        min_norm_weights(gram, lmbda / len(gram) * torch.ones(len(gram), dtype=gram.dtype)),
        lmbda,
    )
    brute = sdmgrad_objective(gram, grid_for(len(gram)), lmbda).min()
    assert solved <= brute + 1e-9


def test_two_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1), g0 = (1, ½). With w = (a, 1 − a), ½‖g_w + λg0‖² has derivative
    # 5a + 1.5λ − 1 in a. λ = 1: positive on [0, 1], so w* = (0, 1) and
    # d = (g2 + g0) / 2 = (½, ¾), i.e. task weights (¼, ¾).
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    update, weights, _ = aggregate(SDMGrad(lmbda=1.0), jacobian)
    torch.testing.assert_close(
        update, torch.tensor([0.5, 0.75], dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        weights, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-6, rtol=0
    )
    # λ = 0.6: a = (1 − 0.9) / 5 = 0.02, d = ((0.04, 0.98) + 0.6 (1, ½)) / 1.6 = (0.4, 0.8)
    update, _, _ = aggregate(SDMGrad(lmbda=0.6), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.4, 0.8], dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(3, 10, 50)), seed=st.integers(0, 2**31 - 1))
def test_objective_sampling_is_sdmgrad_on_the_sampled_tasks(jacobian, seed):
    sampled = SDMGradOS(seed=seed).sample(len(jacobian))
    update, weights, _ = aggregate(SDMGradOS(seed=seed), jacobian)
    others = ~sampled
    assert torch.equal(weights[others], torch.zeros(int(others.sum()), dtype=weights.dtype))
    expected, expected_weights, _ = aggregate(SDMGrad(), jacobian[sampled])
    torch.testing.assert_close(update, expected)
    torch.testing.assert_close(weights[sampled], expected_weights)


def test_sample_sizes_follow_the_reference_law():
    # each of K = 10 tasks in S with probability p = 4/10, S redrawn when empty
    method, size, draws = SDMGradOS(num_samples=4, seed=0), 10, 4000
    samples = torch.stack([method.sample(size) for _ in range(draws)])
    assert samples.shape == (draws, size) and samples.dtype == torch.bool
    sizes = samples.sum(dim=1, dtype=torch.float64)
    assert sizes.min() >= 1
    expected = 0.4 / (1 - 0.6**10)  # P(i ∈ S | S ≠ ∅)
    assert (samples.double().mean(dim=0) - expected).abs().max() < 0.04
    assert float(sizes.mean()) == pytest.approx(4 / (1 - 0.6**10), abs=0.1)
    # P(|S| = 1 | S ≠ ∅) = 10 · 0.4 · 0.6⁹ / (1 − 0.6¹⁰), about 0.04
    single = 10 * 0.4 * 0.6**9 / (1 - 0.6**10)
    assert float((sizes == 1).double().mean()) == pytest.approx(single, abs=0.015)
    # more samples than tasks: every task, every time
    assert SDMGradOS(num_samples=8, seed=0).sample(5).all()


def test_objective_sampling_is_reproducible_from_its_seed_and_state():
    first, second = SDMGradOS(seed=7), SDMGradOS(seed=7)
    assert all(torch.equal(first.sample(10), second.sample(10)) for _ in range(5))
    restored = restore_through_a_checkpoint(first, SDMGradOS(seed=123))
    upcoming = [first.sample(10) for _ in range(3)]
    assert all(torch.equal(restored.sample(10), u) for u in upcoming)
    first.reset()
    assert torch.equal(first.sample(10), SDMGradOS(seed=7).sample(10))


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("sdmgrad", {"lmbda": -0.1}),
        ("sdmgrad", {"lmbda": float("nan")}),
        ("sdmgrad-os", {"lmbda": float("inf")}),
        ("sdmgrad-os", {"num_samples": 0}),
        ("sdmgrad-os", {"num_samples": 2.5}),
    ],
)
def test_bad_hyperparameters_are_refused(name, bad):
    with pytest.raises(ValueError, match=f"^{name}: "):
        make_aggregator(name, **bad)
