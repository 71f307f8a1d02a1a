import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import NashMTL, aggregate, make_aggregator
from tests.strategies import build_jacobian, jacobians


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians())
def test_every_task_gets_its_bargaining_share(jacobian):
    """α > 0 and α_i (Gα)_i = 1 (up to the ridge, made negligible here), hence ‖Jᵀα‖² = K."""
    gram = jacobian @ jacobian.T
    _, alpha, _ = aggregate(NashMTL(ridge=1e-14), jacobian)
    assert alpha.min() > 0
    torch.testing.assert_close(
        alpha * (gram @ alpha), torch.ones(len(alpha), dtype=alpha.dtype), rtol=0, atol=1e-7
    )


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians())
def test_the_default_ridge_moves_the_shares_little(jacobian):
    update, alpha, _ = aggregate(NashMTL(), jacobian)
    shares = alpha * ((jacobian @ jacobian.T) @ alpha)
    assert (shares - 1).abs().max() < 1e-4
    assert float(update.norm()) == pytest.approx(math.sqrt(len(jacobian)), rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians(sizes=(2, 3, 10)), seed=st.integers(0, 2**31 - 1))
def test_rescaling_a_task_does_not_change_the_update(jacobian, seed):
    # α_i scales as 1/s_i when g_i is scaled by s_i: the update only sees directions
    scales = torch.exp(
        4
        * torch.randn(
            len(jacobian), 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
    )
    update, _, _ = aggregate(NashMTL(), jacobian)
    rescaled, _, _ = aggregate(NashMTL(), jacobian * scales)
    torch.testing.assert_close(rescaled, update)


def test_two_tasks_by_hand():
    # orthogonal: α_i² ‖g_i‖² = 1, so α = (1, ½) for g1 = (1, 0), g2 = (0, 2): d = (1, 1)
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    update, alpha, _ = aggregate(NashMTL(), jacobian)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(update, torch.tensor([1.0, 1.0], dtype=torch.float64))
    # g1 = (1, 0), g2 = (1, 1), G = [[1, 1], [1, 2]]: α1(α1 + α2) = 1 = α2(α1 + 2α2), so
    # α1² = 2α2² and α2 = 1/√(2 + √2), α1 = √2 α2
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    _, alpha, _ = aggregate(NashMTL(), jacobian)
    a2 = 1 / math.sqrt(2 + math.sqrt(2))
    torch.testing.assert_close(alpha, torch.tensor([math.sqrt(2) * a2, a2], dtype=torch.float64))


def test_rank_deficient_gradients_have_a_defined_finite_answer():
    # identical gradients: α_i = 1/(√K ‖g‖), the update is √K g/‖g‖
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    update, alpha, _ = aggregate(NashMTL(), g.repeat(4, 1))
    torch.testing.assert_close(alpha, torch.full((4,), 1 / (2 * 5.0), dtype=torch.float64))
    torch.testing.assert_close(update, 2 * g[0] / 5)
    # opposite gradients have no solution without the ridge (α = t(1, 1) sends f to −∞); with
    # it, α = (1/√ε)(1, 1)/‖g‖ and the update cancels
    update, alpha, _ = aggregate(NashMTL(), torch.cat([g, -g]))
    assert torch.isfinite(alpha).all() and update.norm() < 1e-9
    # more tasks than parameters: finite, and ‖Jᵀα‖² = Σ α_i (Gα)_i ≤ K
    jacobian = build_jacobian(12, 4, seed=0, structure="gaussian")
    update, alpha, _ = aggregate(NashMTL(), jacobian)
    assert torch.isfinite(alpha).all() and alpha.min() > 0
    assert update.norm() <= math.sqrt(12) * (1 + 1e-9)


@pytest.mark.parametrize("bad", [{"ridge": 0.0}, {"ridge": 1.0}, {"ridge": float("nan")}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^nash-mtl: ridge must be in \(0, 1\)"):
        make_aggregator("nash-mtl", **bad)
