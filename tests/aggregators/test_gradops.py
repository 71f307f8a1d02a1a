import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import GradOPS, aggregate, make_aggregator
from mtrl.aggregators.gradops import ridge_inverse
from tests.strategies import build_jacobian, cosines_with, jacobians

TOL = 1e-5
BY_HAND = {"rtol": 0, "atol": 1e-6}  # the ridge (1e-7) moves exact answers by about that much


def projected(jacobian: torch.Tensor, method: GradOPS) -> torch.Tensor:
    """The rows g'_i, built from the method's projection coefficients."""
    return method.projection_coefficients(jacobian @ jacobian.T).T @ jacobian


@settings(max_examples=60, deadline=None)
@given(jacobian=jacobians())
def test_each_projection_is_orthogonal_to_every_other_task(jacobian):
    rows = projected(jacobian, GradOPS())
    cosines = (rows @ jacobian.T) / torch.outer(rows.norm(dim=1), jacobian.norm(dim=1))
    off_diagonal = cosines[~torch.eye(len(jacobian), dtype=torch.bool)]
    assert off_diagonal.abs().max() < TOL
    # and g'_i · g_i = ‖g'_i‖² ≥ 0, exactly so for the pseudo-inverse; the ridge ε moves it by
    # about ε / λ_min of the cosine matrix, which nearly dependent gradients make small
    own = (rows * jacobian).sum(dim=1)
    unit = jacobian / jacobian.norm(dim=1, keepdim=True)
    ridge_error = GradOPS().ridge / torch.linalg.eigvalsh(unit @ unit.T).min()
    error = (own - rows.square().sum(dim=1)).abs() / jacobian.square().sum(dim=1)
    assert error.max() < TOL + ridge_error


@settings(max_examples=60, deadline=None)
@given(jacobian=jacobians(), alpha=st.floats(-5, 5))
def test_update_conflicts_with_no_task_for_any_alpha(jacobian, alpha):
    update, _, _ = aggregate(GradOPS(alpha=alpha), jacobian)
    assert torch.isfinite(update).all()
    assert cosines_with(jacobian, update).min() > -TOL


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), alpha=st.sampled_from([0.0, -3.0, 1.5]), seed=st.integers(0, 99))
def test_update_does_not_depend_on_task_order(jacobian, alpha, seed):
    order = torch.randperm(len(jacobian), generator=torch.Generator().manual_seed(seed))
    update, _, _ = aggregate(GradOPS(alpha=alpha), jacobian)
    permuted_update, _, _ = aggregate(GradOPS(alpha=alpha), jacobian[order])
    torch.testing.assert_close(permuted_update, update, rtol=1e-6, atol=1e-9 * update.norm())


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), exponent=st.integers(-12, 12), alpha=st.sampled_from([0.0, -3.0]))
def test_scaling_the_gradients_scales_the_update(jacobian, exponent, alpha):
    scale = 10.0**exponent
    update, _, _ = aggregate(GradOPS(alpha=alpha), jacobian)
    scaled, _, _ = aggregate(GradOPS(alpha=alpha), jacobian * scale)
    torch.testing.assert_close(scaled / scale, update, rtol=1e-6, atol=1e-9 * update.norm())


def test_two_tasks_by_hand():
    # g1 = (1, 0), g2 = (1, 1): g'1 = g1 − ½ g2 = (½, −½), g'2 = g2 − g1 = (0, 1)
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    update, _, _ = aggregate(GradOPS(), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.5, 0.5], dtype=torch.float64), **BY_HAND)
    # R = cos(g_i, (½, ½)) = (1/√2, 1); α = −2 gives w ∝ (2, 1), summing to K = 2
    update, _, _ = aggregate(GradOPS(alpha=-2.0), jacobian)
    torch.testing.assert_close(update, torch.tensor([2 / 3, 0.0], dtype=torch.float64), **BY_HAND)


def test_orthogonal_tasks_are_left_alone():
    jacobian = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    update, _, _ = aggregate(GradOPS(), jacobian)
    torch.testing.assert_close(
        update, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), **BY_HAND
    )


def test_a_task_inside_the_others_span_gets_no_projection():
    # g3 = g1 + g2 lies in span{g1, g2}, so g'3 = 0, and g1, g2 are each in span of the rest
    g1, g2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    jacobian = torch.stack([g1, g2, g1 + g2]).double()
    rows = projected(jacobian, GradOPS())
    assert rows.norm(dim=1).max() < 1e-3
    # a fourth, independent task keeps its whole gradient
    jacobian = torch.cat([jacobian, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    update, _, _ = aggregate(GradOPS(), jacobian)
    torch.testing.assert_close(
        update, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_ridge_inverse_is_the_ridge_regression_inverse_when_it_factorises():
    jacobian = build_jacobian(6, 50, seed=1, structure="shared_conflict")
    norms = jacobian.norm(dim=1)
    cosines = (jacobian @ jacobian.T) / torch.outer(norms, norms)
    expected = torch.linalg.inv(cosines + 1e-7 * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(ridge_inverse(cosines, 1e-7), expected)


def test_ridge_inverse_raises_the_ridge_past_an_indefinite_rounding():
    # a cosine matrix with one eigenvalue at -1e-6, as float32 rounding can leave: the ridge
    # 1e-7 does not make it definite, the next step (1e-5) does
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=generator))
    eigenvalues = torch.tensor([-1e-6, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    cosines = basis @ torch.diag(eigenvalues) @ basis.T
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.linalg.cholesky_ex(cosines + 1e-7 * eye).info > 0
    inverse = ridge_inverse(cosines, 1e-7)
    torch.testing.assert_close(inverse, torch.linalg.inv(cosines + 1e-5 * eye))


def test_float32_agrees_with_float64():
    jacobian = build_jacobian(10, 400, seed=3, structure="shared_conflict")
    update64, _, _ = aggregate(GradOPS(alpha=-3.0), jacobian)
    update32, weights32, _ = aggregate(GradOPS(alpha=-3.0), jacobian.float())
    assert update32.dtype == weights32.dtype == torch.float32
    assert (update32.double() - update64).norm() < 1e-5 * update64.norm()


@pytest.mark.parametrize("bad", [{"alpha": math.nan}, {"ridge": 0.0}, {"eps": 2.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match="gradops"):
        make_aggregator("gradops", **bad)


def reference_gradops(jacobian: torch.Tensor) -> torch.Tensor:
    """GradOPS in parameter space: each g_i minus its least-squares fit by the others."""
    projected = []
    for task in range(len(jacobian)):
        others = torch.cat([jacobian[:task], jacobian[task + 1 :]])
        fit = torch.linalg.lstsq(others.T, jacobian[task]).solution
        projected.append(jacobian[task] - others.T @ fit)
    return torch.stack(projected).sum(dim=0)


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians())
def test_gram_path_equals_the_parameter_space_projections(jacobian):
    # A tiny ridge: this compares the two computations, not the regularisation (whose bias,
    # about ridge / smallest eigenvalue of the cosine matrix, the default 1e-7 adds).
    update, _, _ = aggregate(GradOPS(ridge=1e-12), jacobian)
    expected = reference_gradops(jacobian)
    assert (update - expected).norm() < 1e-6 * jacobian.norm(dim=1).max()


def with_near_duplicate(jacobian: torch.Tensor, cosine: float) -> torch.Tensor:
    """``jacobian`` with task 1 turned to the given cosine with task 0 (its length kept)."""
    jacobian = jacobian.clone()
    unit = jacobian[0] / jacobian[0].norm()
    rest = jacobian[1] - (jacobian[1] @ unit) * unit
    turned = cosine * unit + math.sqrt(1 - cosine**2) * rest / rest.norm()
    jacobian[1] = turned * jacobian[1].norm()
    return jacobian


@settings(max_examples=60, deadline=None)
@given(
    jacobian=jacobians(sizes=(3, 10, 50)),
    cosine=st.sampled_from([0.99, 0.995, 0.9999, 0.99995]),
    alpha=st.sampled_from([-5.0, -3.0, -1.0, 2.0]),
)
def test_a_trade_off_keeps_a_quarter_of_the_plain_update_and_conflicts_with_no_task(
    jacobian, cosine, alpha
):
    """With a task nearly in another's span, α < 0 used to hand it all the weight and shrink
    the update to almost nothing (‖d‖ / ‖g0‖: 3.16 at α = 0, 0.098 at α = −3 for K = 10)."""
    jacobian = with_near_duplicate(jacobian, cosine)
    plain, _, _ = aggregate(GradOPS(), jacobian)
    traded, weights, _ = aggregate(GradOPS(alpha=alpha), jacobian)
    assert traded.norm() >= (0.25 - 1e-6) * plain.norm()
    # orthogonality holds up to the ridge's error, ε / λ_min of the cosine matrix, which the
    # near-duplicate pair makes small
    unit = jacobian / jacobian.norm(dim=1, keepdim=True)
    ridge_error = GradOPS().ridge / torch.linalg.eigvalsh(unit @ unit.T).min()
    assert cosines_with(jacobian, traded).min() > -(TOL + ridge_error)
    assert torch.isfinite(weights).all()


def test_the_published_reproducer_no_longer_collapses():
    torch.manual_seed(0)
    jacobian = with_near_duplicate(torch.randn(10, 2000, dtype=torch.float64), 0.995)
    plain, _, _ = aggregate(GradOPS(), jacobian)
    traded, _, _ = aggregate(GradOPS(alpha=-3), jacobian)
    # the sum of each gradient's residual after least squares on the other nine, in float64
    residuals = []
    for i in range(len(jacobian)):
        others = torch.cat([jacobian[:i], jacobian[i + 1 :]])
        fit = torch.linalg.lstsq(others.T, jacobian[i][:, None]).solution[:, 0]
        residuals.append(jacobian[i] - fit @ others)
    expected = torch.stack(residuals).sum(dim=0)
    # the ridge moves it by about ε / λ_min(cosines) = 1e-7 / 0.005
    assert (plain - expected).norm() <= 1e-4 * expected.norm()
    assert traded.norm() / plain.norm() == pytest.approx(0.25, rel=1e-6)
