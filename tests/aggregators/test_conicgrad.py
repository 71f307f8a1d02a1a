import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl.aggregators import MGDA, ConicGrad, aggregate, make_aggregator, normalized_gram
from tests.aggregators.helpers import grid_for
from tests.strategies import cosines_with, jacobians


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.0, 0.99))
def test_update_stays_in_the_cone_with_the_mean_length(jacobian, c):
    update, _, _ = aggregate(ConicGrad(c=c), jacobian)
    mean = jacobian.mean(dim=0)
    assert cosines_with(mean[None], update)[0] >= c - 1e-9
    assert float(update.norm()) == pytest.approx(float(mean.norm()), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.0, 0.99))
def test_strong_duality_certifies_the_solution(jacobian, c):
    """min_i ⟨g_i, d⟩ of the returned d (primal) meets the dual value ‖g0‖ h(g_w*). Weak
    duality makes the primal value a lower bound for every feasible d, so both are optimal."""
    method = ConicGrad(c=c)
    gram = normalized_gram(jacobian @ jacobian.T)
    dual = method.dual_objective(gram, method.solve_dual(gram))
    update, _, _ = aggregate(method, jacobian)
    primal = (jacobian @ update).min() / (jacobian @ jacobian.T).diagonal().mean()
    assert primal <= dual + 1e-9
    assert dual - primal < 1e-5


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3)), c=st.floats(0.0, 0.99))
def test_dual_is_no_worse_than_brute_force(jacobian, c):
    method = ConicGrad(c=c)
    gram = normalized_gram(jacobian @ jacobian.T)
    solved = method.dual_objective(gram, method.solve_dual(gram))
    brute = method.dual_objective(gram, grid_for(len(gram))).min()
    assert solved <= brute + 1e-6


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians())
def test_the_widest_cone_is_mgda_and_the_narrowest_the_mean(jacobian):
    # cos(g_MGDA, g0) ≥ 0 always, so with c = 0 MGDA's direction is in the cone and optimal
    mgda, _, _ = aggregate(MGDA(), jacobian)
    mean = jacobian.mean(dim=0)
    # near a Pareto-stationary point the direction of the tiny g_MGDA is not well posed
    assume(mgda.norm() > 1e-2 * mean.norm())
    update, _, _ = aggregate(ConicGrad(c=0.0), jacobian)
    expected = mean.norm() * mgda / mgda.norm()
    assert (update - expected).norm() < 1e-5 * mean.norm()
    update, _, _ = aggregate(ConicGrad(c=1.0), jacobian)
    torch.testing.assert_close(update, mean)


def test_unbalanced_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1): g0 = (1, ½), ‖g0‖² = 5/4, and MGDA's point (0.4, 0.8) has
    # cosine 0.8 with g0. Cone c = ½ contains it: d = ‖g0‖ (0.4, 0.8)/‖(0.4, 0.8)‖ = (½, 1).
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    update, _, _ = aggregate(ConicGrad(c=0.5), jacobian)
    torch.testing.assert_close(
        update, torch.tensor([0.5, 1.0], dtype=torch.float64), rtol=0, atol=1e-6
    )
    # Cone c = 0.9 does not: d is the cone's edge towards g2, u = (2, 1)/√5 rotated by
    # arccos 0.9 towards e⊥ = (−1, 2)/√5: d = √(5/4) (0.9 u + √0.19 e⊥).
    update, _, _ = aggregate(ConicGrad(c=0.9), jacobian)
    sine = math.sqrt(0.19)
    expected = 0.5 * torch.tensor([1.8 - sine, 0.9 + 2 * sine], dtype=torch.float64)
    torch.testing.assert_close(update, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [{"c": -0.1}, {"c": 1.1}, {"c": float("nan")}, {"smoothing": 0.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^conicgrad: "):
        make_aggregator("conicgrad", **bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("c", [0.0, 0.5, 0.9])
def test_a_pareto_stationary_point_gets_no_conflicting_direction(c, dtype):
    """Two tasks pulling exactly against each other put the zero vector in the gradients' hull:
    MGDA's point is then rounding noise, and dividing noise by noise once gave a direction at
    a cosine of −0.11 to one of them (c = 0.9)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b, r = torch.randn(3, 20, generator=generator, dtype=dtype)
        jacobian = torch.stack([a, -a, b, 0.5 * b + r])
        update, _, _ = aggregate(ConicGrad(c=c), jacobian)
        assert torch.isfinite(update).all()
        assert (jacobian @ update).min() >= -1e-6 * jacobian.norm(dim=1).max() ** 2
