import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import CAGrad, FastCAGrad, aggregate, make_aggregator
from tests.aggregators.helpers import restore_through_a_checkpoint
from tests.strategies import jacobians


@settings(max_examples=30, deadline=None)
@given(
    jacobian=jacobians(sizes=(2, 3, 10)),
    c=st.floats(0.05, 0.95),
    rescale=st.sampled_from([0, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_one_task_per_group_is_cagrad(jacobian, c, rescale, seed):
    update, _, _ = aggregate(
        FastCAGrad(c=c, rescale=rescale, groups=len(jacobian), seed=seed), jacobian
    )
    expected, _, _ = aggregate(CAGrad(c=c, rescale=rescale), jacobian)
    assert (update - expected).norm() <= 1e-6 * expected.norm()


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians(), c=st.floats(0.0, 0.95))
def test_a_single_group_is_the_mean(jacobian, c):
    # g_w = g0, so d = (1 + c) g0, which the default rescale divides by 1 + c
    update, _, _ = aggregate(FastCAGrad(c=c, groups=1, seed=0), jacobian)
    torch.testing.assert_close(update, jacobian.mean(dim=0))


@settings(max_examples=20, deadline=None)
@given(jacobian=jacobians(sizes=(10, 50)), c=st.floats(0.05, 0.95), groups=st.integers(2, 8))
def test_update_stays_in_the_ball_around_the_exact_mean(jacobian, c, groups):
    update, _, _ = aggregate(FastCAGrad(c=c, rescale=0, groups=groups, seed=0), jacobian)
    mean = jacobian.mean(dim=0)
    assert (update - mean).norm() <= c * mean.norm() * (1 + 1e-9)


def test_groups_are_single_tasks_and_the_average_of_the_rest():
    grouping = FastCAGrad(groups=4, seed=0).grouping(10)
    assert grouping.shape == (4, 10)
    assert torch.equal((grouping > 0).sum(dim=0), torch.ones(10, dtype=torch.long))  # a partition
    assert (grouping > 0).sum(dim=1).tolist() == [1, 1, 1, 7]
    torch.testing.assert_close(grouping.sum(dim=1), torch.ones(4, dtype=torch.float64))
    assert FastCAGrad(groups=8, seed=0).grouping(3).shape == (3, 3)


def test_reproducible_from_its_seed_and_state():
    jacobian = torch.randn(10, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first, second = FastCAGrad(seed=5), FastCAGrad(seed=5)
    for _ in range(3):
        assert torch.equal(aggregate(first, jacobian).update, aggregate(second, jacobian).update)
    restored = restore_through_a_checkpoint(first, FastCAGrad(seed=1))
    upcoming = [first.grouping(10) for _ in range(3)]
    assert all(torch.equal(restored.grouping(10), u) for u in upcoming)
    first.reset()
    assert torch.equal(first.grouping(10), FastCAGrad(seed=5).grouping(10))


@pytest.mark.parametrize(
    "bad", [{"c": 1.0}, {"rescale": 5}, {"groups": 0}, {"groups": 2.5}, {"groups": True}]
)
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^cagrad-fast: "):
        make_aggregator("cagrad-fast", **bad)
