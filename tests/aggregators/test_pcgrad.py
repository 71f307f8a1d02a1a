import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import PCGrad, aggregate, make_aggregator
from tests.strategies import jacobians


def reference_pcgrad(jacobian: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """PCGrad in parameter space, written as in the paper: one task and one pair at a time."""
    projected = []
    for task, order in enumerate(orders):
        g = jacobian[task].clone()
        for other in order.tolist():
            product = g @ jacobian[other]
            if product < 0:
                g -= product / jacobian[other].square().sum() * jacobian[other]
        projected.append(g)
    return torch.stack(projected).mean(dim=0)


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), seed=st.integers(0, 2**31 - 1))
def test_gram_path_equals_the_parameter_space_loop(jacobian, seed):
    orders = PCGrad(seed=seed).visiting_orders(len(jacobian))
    update, _, _ = aggregate(PCGrad(seed=seed), jacobian)
    expected = reference_pcgrad(jacobian, orders)
    torch.testing.assert_close(update, expected, rtol=1e-7, atol=1e-9 * expected.norm())


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(sizes=(2,)))
def test_two_tasks_match_the_closed_form(jacobian):
    g1, g2 = jacobian
    product = g1 @ g2
    if product < 0:
        g1, g2 = g1 - product / (g2 @ g2) * g2, g2 - product / (g1 @ g1) * g1
    update, _, _ = aggregate(PCGrad(), jacobian)
    torch.testing.assert_close(update, (g1 + g2) / 2, rtol=1e-7, atol=1e-9 * update.norm())


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), seed=st.integers(0, 99))
def test_without_conflicts_it_is_the_mean(jacobian, seed):
    agreeing = jacobian.abs()  # non-negative entries: every pairwise product is ≥ 0
    update, _, _ = aggregate(PCGrad(seed=seed), agreeing)
    torch.testing.assert_close(update, agreeing.mean(dim=0))


def test_two_conflicting_tasks_by_hand():
    # g1 = (1, 0), g2 = (−1, 1), g1·g2 = −1: g1' = g1 + ½ g2 = (½, ½), g2' = g2 + g1 = (0, 1)
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    update, _, _ = aggregate(PCGrad(), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.25, 0.75], dtype=torch.float64))
    update, _, _ = aggregate(PCGrad(reduction="sum"), jacobian)
    torch.testing.assert_close(update, torch.tensor([0.5, 1.5], dtype=torch.float64))


def test_same_seed_same_orders_and_state_round_trip():
    first, second = PCGrad(seed=7), PCGrad(seed=7)
    assert torch.equal(first.visiting_orders(10), second.visiting_orders(10))
    state = first.state_dict()
    upcoming = first.visiting_orders(10)
    restored = PCGrad(seed=123)
    restored.load_state_dict(state)
    assert torch.equal(restored.visiting_orders(10), upcoming)
    first.reset()
    assert torch.equal(first.visiting_orders(10), PCGrad(seed=7).visiting_orders(10))


def test_each_task_gets_its_own_order_of_the_others():
    orders = PCGrad(seed=0).visiting_orders(6)
    for task, order in enumerate(orders.tolist()):
        assert sorted(order) == [t for t in range(6) if t != task]
    assert len({tuple(o) for o in orders.tolist()}) > 1


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        make_aggregator("pcgrad", reduction="max")
