import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import MGDA, CAGrad, IMGrad, aggregate, make_aggregator, normalized_gram
from tests.aggregators.helpers import grid_for
from tests.strategies import cosines_with, jacobians


def random_weights(size: int, count: int = 64) -> torch.Tensor:
    """Uniform points of the simplex (normalised exponentials), fixed per size."""
    generator = torch.Generator().manual_seed(size)
    exponential = -torch.rand(count, size, generator=generator, dtype=torch.float64).log()
    return exponential / exponential.sum(dim=1, keepdim=True)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.05, 0.45))
def test_with_cm_one_the_dual_is_cagrads_with_half_the_linear_term(jacobian, c):
    """What "reduces to CAGrad when cm = 1" means: F(w) = ½ g_wᵀg0 + c‖g0‖‖g_w‖, which is
    CAGrad's objective at radius c minus ½ g_wᵀg0, and equals ½ × CAGrad's objective at radius
    2c: so IMGrad with cm = 1 solves CAGrad's dual with radius 2c, not c."""
    gram = normalized_gram(jacobian @ jacobian.T)
    w = random_weights(len(gram))
    mean_product = (w @ gram).mean(dim=-1)  # g_wᵀg0
    forced = IMGrad(c=c).dual_objective(gram, w, cm=1.0)
    torch.testing.assert_close(forced, CAGrad(c=c).dual_objective(gram, w) - 0.5 * mean_product)
    torch.testing.assert_close(forced, 0.5 * CAGrad(c=2 * c).dual_objective(gram, w))
    solved = IMGrad(c=c).solve_dual(gram, cm=1.0)
    reference = CAGrad(c=2 * c)
    torch.testing.assert_close(
        reference.dual_objective(gram, solved),
        reference.dual_objective(gram, reference.solve_dual(gram)),
        rtol=0,
        atol=1e-9,
    )


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians())
def test_cm_is_the_cosine_of_the_mean_with_mgda(jacobian):
    gram = normalized_gram(jacobian @ jacobian.T)
    mgda, _, _ = aggregate(MGDA(), jacobian)
    cm = IMGrad().alignment(gram)
    assert 0 <= cm <= 1
    expected = cosines_with(jacobian.mean(dim=0, keepdim=True), mgda)[0]
    assert float(cm) == pytest.approx(float(expected), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3)), c=st.floats(0.05, 0.95))
def test_dual_is_no_worse_than_brute_force(jacobian, c):
    method = IMGrad(c=c)
    gram = normalized_gram(jacobian @ jacobian.T)
    solved = method.dual_objective(gram, method.solve_dual(gram))
    brute = method.dual_objective(gram, grid_for(len(gram))).min()
    assert solved <= brute + 1e-6


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.05, 0.95))
def test_update_stays_in_cagrads_ball(jacobian, c):
    update, _, _ = aggregate(IMGrad(c=c, rescale=0), jacobian)
    mean = jacobian.mean(dim=0)
    assert (update - mean).norm() <= c * mean.norm() * (1 + 1e-9)


def test_unbalanced_tasks_by_hand():
    # g1 = (2, 0), g2 = (0, 1): g0 = (1, ½), MGDA's point (0.4, 0.8), so cm = 0.8 / (1 · 1) =
    # 0.8 and the radius is c·0.8/0.7. With c = ½ the dual's derivative in w1 at w1 = 0 is
    # 1.5 − (4/7)·√1.25 > 0 (and it only grows), so w* = (0, 1): the update is CAGrad's,
    # (1, ½ + ½√1.25) / 1.25.
    jacobian = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    method = IMGrad(c=0.5)
    gram = normalized_gram(jacobian @ jacobian.T)
    assert float(method.alignment(gram)) == pytest.approx(0.8, abs=1e-6)
    update, _, _ = aggregate(method, jacobian)
    expected = torch.tensor([1.0, 0.5 + 0.5 * 1.25**0.5], dtype=torch.float64) / 1.25
    torch.testing.assert_close(update, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [{"c": -0.1}, {"c": 1.0}, {"rescale": 3}, {"smoothing": 0.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^imgrad: "):
        make_aggregator("imgrad", **bad)
