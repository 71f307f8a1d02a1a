import numpy as np
import pytest
import torch
from hypothesis import given, settings
from scipy.optimize import minimize

from mtrl.aggregators import MGDA, aggregate, make_aggregator, normalized_gram
from mtrl.aggregators.mgda import min_norm_weights
from tests.strategies import jacobians


def scipy_min_norm(gram: np.ndarray) -> float:
    """min_{w∈Δ} wᵀGw by SLSQP from every vertex and the centre (the problem is convex)."""
    size = len(gram)
    starts = [np.full(size, 1 / size), *np.eye(size)]
    best = np.inf
    for start in starts:
        result = minimize(
            lambda w: w @ gram @ w,
            start,
            jac=lambda w: 2 * gram @ w,
            bounds=[(0, 1)] * size,
            constraints={
                "type": "eq",
                "fun": lambda w: w.sum() - 1,
                "jac": lambda w: np.ones(size),
            },
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 500},
        )
        best = min(best, float(result.fun))
    return best


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3, 4)))
def test_equals_a_brute_force_quadratic_program(jacobian):
    gram = normalized_gram(jacobian @ jacobian.T)
    w = min_norm_weights(gram)
    solved = float(w @ gram @ w)
    reference = scipy_min_norm(gram.numpy())
    assert solved <= reference + 1e-9
    assert solved == pytest.approx(reference, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians())
def test_min_norm_optimality_conditions(jacobian):
    """(Gw*)_i ≥ w*ᵀGw* for every task, with equality where w*_i > 0: every task gradient has
    at least ‖d‖² of inner product with the update d, and the tasks it rests on exactly that."""
    update, w, _ = aggregate(MGDA(), jacobian)
    assert w.min() >= 0 and float(w.sum()) == pytest.approx(1.0)
    scale = jacobian.square().sum(dim=1).max()
    products = jacobian @ update
    squared_norm = update @ update
    assert (products - squared_norm).min() >= -1e-8 * scale
    support = w > 1e-4
    assert (products[support] - squared_norm).abs().max() <= 1e-6 * scale


def test_two_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1): ‖(2a, 1 − a)‖² = 5a² − 2a + 1 is least at a = 1/5
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    update, weights, _ = aggregate(MGDA(), jacobian)
    torch.testing.assert_close(weights, torch.tensor([0.2, 0.8], dtype=torch.float64))
    torch.testing.assert_close(update, torch.tensor([0.4, 0.8], dtype=torch.float64))
    # g1 = (1, 0), g2 = (1, 1): g1·g2 = ‖g1‖², so the hull's shortest point is g1 itself. The
    # constraint w2 ≥ 0 is only weakly active there, where the barrier solve (final weight
    # 1e-12) leaves w2 ≈ 1e-6.
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    update, _, _ = aggregate(MGDA(), jacobian)
    torch.testing.assert_close(
        update, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_takes_no_hyperparameters():
    with pytest.raises(ValueError, match=r"'mgda' has no hyperparameter.*valid: none"):
        make_aggregator("mgda", c=0.5)
