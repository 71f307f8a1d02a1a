import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import GradVac, aggregate, make_aggregator
from tests.aggregators.helpers import restore_through_a_checkpoint
from tests.strategies import jacobians


def reference_gradvac(jacobian, orders, targets, beta):
    """GradVac in parameter space, as in the paper: one task and one pair at a time.
    Returns the update and the new targets."""
    targets = targets.clone()
    vaccinated = []
    for task, order in enumerate(orders):
        g = jacobian[task].clone()
        for other in order.tolist():
            gj = jacobian[other]
            phi = float(g @ gj / (g.norm() * gj.norm()))
            target = float(targets[task, other])
            if phi < target:
                step = (
                    g.norm()
                    * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                    / (gj.norm() * math.sqrt(1 - target**2))
                )
                g = g + step * gj
            targets[task, other] = (1 - beta) * target + beta * phi
        vaccinated.append(g)
    return torch.stack(vaccinated).sum(dim=0), targets


def with_targets(method: GradVac, targets: torch.Tensor) -> GradVac:
    state = method.state_dict()
    method.load_state_dict({**state, "targets": targets})
    return method


@settings(max_examples=40, deadline=None)
@given(
    jacobian=jacobians(sizes=(2, 3, 10)),
    seed=st.integers(0, 2**31 - 1),
    beta=st.sampled_from([0.01, 0.5, 1.0]),
    target_scale=st.sampled_from([0.0, 0.3, 0.9]),
)
def test_gram_path_and_targets_equal_the_parameter_space_loop(jacobian, seed, beta, target_scale):
    """Each visited target becomes (1 − β) old + β observed, the observed cosine being that of
    the partly vaccinated g'_i with g_j; the update is the sum of the vaccinated gradients."""
    size = len(jacobian)
    targets = target_scale * torch.rand(
        size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    orders = GradVac(seed=seed).visiting_orders(size)
    expected, expected_targets = reference_gradvac(jacobian, orders, targets, beta)
    method = with_targets(GradVac(beta=beta, seed=seed), targets)
    update, _, _ = aggregate(method, jacobian)
    torch.testing.assert_close(update, expected, rtol=1e-7, atol=1e-9 * expected.norm())
    off_diagonal = ~torch.eye(size, dtype=torch.bool)
    torch.testing.assert_close(method.targets[off_diagonal], expected_targets[off_diagonal])


@settings(max_examples=30, deadline=None)
@given(jacobian=jacobians(), seed=st.integers(0, 99))
def test_targets_below_the_cosines_leave_the_sum(jacobian, seed):
    agreeing = jacobian.abs()  # non-negative entries: every cosine ≥ 0 = the initial targets
    method = GradVac(seed=seed)
    update, _, _ = aggregate(method, agreeing)
    torch.testing.assert_close(update, agreeing.sum(dim=0))
    # the targets moved from 0 towards the observed cosines: β cos(g_i, g_j)
    cosines = (
        torch.nn.functional.normalize(agreeing, dim=1)
        @ torch.nn.functional.normalize(agreeing, dim=1).T
    )
    off_diagonal = ~torch.eye(len(agreeing), dtype=torch.bool)
    torch.testing.assert_close(method.targets[off_diagonal], 0.01 * cosines[off_diagonal])


def test_two_orthogonal_tasks_by_hand():
    # g1 = (1, 0), g2 = (0, 1), targets ½: φ = 0 < ½, so g'1 = g1 + g2 (½·1 − 0)/√¾ = (1, 1/√3),
    # whose cosine with g2 is ½; likewise g'2 = (1/√3, 1). The targets become (1 − β)½.
    jacobian = torch.eye(2, dtype=torch.float64)
    method = with_targets(GradVac(beta=0.1), torch.full((2, 2), 0.5, dtype=torch.float64))
    update, _, _ = aggregate(method, jacobian)
    expected = torch.full((2,), 1 + 1 / math.sqrt(3), dtype=torch.float64)
    torch.testing.assert_close(update, expected)
    torch.testing.assert_close(method.targets[0, 1], torch.tensor(0.45, dtype=torch.float64))
    torch.testing.assert_close(method.targets[1, 0], torch.tensor(0.45, dtype=torch.float64))


def test_state_survives_a_checkpoint_and_reset_clears_it():
    jacobian = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = GradVac(beta=0.5, seed=3)
    for _ in range(3):
        aggregate(first, jacobian)
    restored = restore_through_a_checkpoint(first, GradVac(beta=0.5, seed=99))
    assert torch.equal(restored.targets, first.targets)
    torch.testing.assert_close(
        aggregate(restored, jacobian).update, aggregate(first, jacobian).update
    )
    first.reset()
    assert first.targets.numel() == 0
    fresh = GradVac(beta=0.5, seed=3)
    torch.testing.assert_close(aggregate(first, jacobian).update, aggregate(fresh, jacobian).update)


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": 1.5}, {"beta": float("nan")}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^gradvac: beta must be in \(0, 1\]"):
        make_aggregator("gradvac", **bad)
