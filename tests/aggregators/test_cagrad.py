import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from mtrl.aggregators import CAGrad, aggregate, make_aggregator, normalized_gram
from tests.aggregators.helpers import grid_for
from tests.strategies import jacobians


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians())
def test_zero_radius_is_the_mean(jacobian):
    update, _, _ = aggregate(CAGrad(c=0.0), jacobian)
    torch.testing.assert_close(update, jacobian.mean(dim=0))


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.05, 0.95))
def test_update_stays_in_the_ball_around_the_mean(jacobian, c):
    update, _, _ = aggregate(CAGrad(c=c, rescale=0), jacobian)
    mean = jacobian.mean(dim=0)
    assert (update - mean).norm() <= c * mean.norm() * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.05, 0.95))
def test_strong_duality_certifies_the_solution(jacobian, c):
    """The primal value min_i ⟨g_i, d⟩ of the returned d meets the dual value at w*: both are
    optimal. Weak duality makes the primal a lower bound, so a gap would expose a poor solve."""
    method = CAGrad(c=c, rescale=0)
    gram = normalized_gram(jacobian @ jacobian.T)
    dual = method.dual_objective(gram, method.solve_dual(gram))
    update, _, _ = aggregate(method, jacobian)
    scale = (jacobian @ jacobian.T).diagonal().mean()
    primal = (jacobian @ update).min() / scale
    assert primal <= dual + 1e-9
    assert dual - primal < 1e-5


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3)), c=st.floats(0.05, 0.95))
def test_dual_is_no_worse_than_brute_force(jacobian, c):
    method = CAGrad(c=c)
    gram = normalized_gram(jacobian @ jacobian.T)
    solved = method.dual_objective(gram, method.solve_dual(gram))
    brute = method.dual_objective(gram, grid_for(len(gram))).min()
    assert solved <= brute + 1e-6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("tasks", "params"), [(10, 3), (10, 5), (50, 5)])
def test_dual_with_linearly_dependent_gradients_matches_a_general_solver(tasks, params, seed):
    """K > P puts 0 in (or near) the convex hull, where ‖g_w‖ has no curvature bound: the solve
    must still reach SLSQP's optimum from the best of several starts."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-3, 3, tasks, dtype=torch.float64) ** (seed % 2)
    jacobian = torch.randn(tasks, params, generator=generator, dtype=torch.float64)
    jacobian = jacobian * scales[:, None]
    method = CAGrad()
    gram = normalized_gram(jacobian @ jacobian.T)
    w = method.solve_dual(gram)
    assert w.min() >= 0 and abs(w.sum().item() - 1) < 1e-12
    solved = method.dual_objective(gram, w).item()

    def objective(w: np.ndarray) -> float:
        return method.dual_objective(gram, torch.from_numpy(w)).item()

    starts = [np.full(tasks, 1 / tasks), *np.eye(tasks)[[0, tasks // 2, -1]]]
    reference = min(
        minimize(
            objective,
            start,
            method="SLSQP",
            bounds=[(0, 1)] * tasks,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 2000},
        ).fun
        for start in starts
    )
    assert solved <= reference + 1e-7


def test_orthogonal_unit_tasks_by_hand():
    # g0 = (½, ½); the dual picks w = (½, ½), so d = g0 + c g0 = (1 + c) g0, then ÷ (1 + c²)
    jacobian = torch.eye(2, dtype=torch.float64)
    update, _, _ = aggregate(CAGrad(c=0.5), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.6, 0.6], dtype=torch.float64))
    update, _, _ = aggregate(CAGrad(c=0.5, rescale=2), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_unbalanced_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1), c = ½: the dual's derivative is positive on all of [0, 1] in
    # w1, so w* = (0, 1); ρ = ½‖g0‖ = ½√1.25 and d = g0 + ρ g2 = (1, ½ + ρ), then ÷ 1.25
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    update, _, _ = aggregate(CAGrad(c=0.5), jacobian)
    rho = 0.5 * 1.25**0.5
    expected = torch.tensor([1.0, 0.5 + rho], dtype=torch.float64) / 1.25
    torch.testing.assert_close(update, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [{"c": -0.1}, {"c": 1.0}, {"rescale": 3}, {"smoothing": 0.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match="cagrad"):
        make_aggregator("cagrad", **bad)
