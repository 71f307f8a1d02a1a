import math

import pytest
import torch

from mtrl.aggregators import aggregate, make_aggregator
from mtrl.conflict import conflict_stats
from tests.strategies import build_jacobian

SQRT_HALF = math.sqrt(0.5)


def stats_for(jacobian, weights):
    return conflict_stats(jacobian @ jacobian.T, torch.as_tensor(weights, dtype=jacobian.dtype))


def test_three_tasks_by_hand():
    # g0 = (1, 0), g1 = (−1, 1), g2 = (0, 1): cosines −1/√2, 0, 1/√2; one pair of three conflicts
    jacobian = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    stats = stats_for(jacobian, [1 / 3, 1 / 3, 1 / 3])
    expected_cosines = torch.tensor(
        [[1, -SQRT_HALF, 0], [-SQRT_HALF, 1, SQRT_HALF], [0, SQRT_HALF, 1]], dtype=torch.float64
    )
    torch.testing.assert_close(stats.cosines, expected_cosines)
    assert stats.conflicting_pairs.item() == 1 / 3  # a fraction of counts: exact
    # square roots and divisions round differently with each CPU's kernels: a tolerance of a
    # few ulps, far below any wrong answer
    assert stats.cos_min.item() == pytest.approx(-SQRT_HALF, rel=1e-12)
    # mean update (0, ⅔): inner products (0, ⅔, ⅔), no task conflicts with it
    torch.testing.assert_close(stats.task_products, torch.tensor([0, 2 / 3, 2 / 3]).double())
    assert stats.update_conflicts.item() == 0
    assert stats.update_norm_ratio.item() == pytest.approx(1.0, rel=1e-12)
    # update g0 = (1, 0): task 1 conflicts with it, and it is 1.5 times as long as the mean
    stats = stats_for(jacobian, [1.0, 0.0, 0.0])
    assert stats.update_conflicts.item() == 1
    assert stats.update_norm_ratio.item() == pytest.approx(1.5, rel=1e-12)


def test_one_task_and_zero_gradients_give_numbers_not_nans():
    single = stats_for(torch.tensor([[3.0, 4.0]]), [1.0])
    assert single.conflicting_pairs.item() == 0 and single.cos_min.item() == 1
    with_zero = stats_for(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), [0.5, 0.5])
    assert with_zero.cosines[0, 1].item() == 0
    assert with_zero.update_conflicts.item() == 0
    everything_zero = stats_for(torch.zeros(3, 4), [1 / 3] * 3)
    for value in vars(everything_zero).values():
        assert torch.isfinite(value).all()


def test_gradops_never_conflicts_while_the_mean_does():
    jacobian = build_jacobian(10, 500, seed=0, structure="shared_conflict")
    gram = jacobian @ jacobian.T
    for name, expect_conflicts in [("mean", True), ("gradops", False)]:
        _, weights, _ = aggregate(make_aggregator(name), jacobian)
        stats = conflict_stats(gram, weights)
        assert (stats.update_conflicts.item() > 0) == expect_conflicts
        assert stats.conflicting_pairs.item() > 0.3


def test_everything_stays_on_the_device_as_tensors():
    stats = stats_for(torch.randn(5, 30), torch.full((5,), 0.2))
    for value in vars(stats).values():
        assert isinstance(value, torch.Tensor)


def test_layer_scores_count_pairs_below_the_threshold():
    from mtrl.conflict import LayerConflicts

    # Layer a: tasks 0 and 1 point opposite ways, task 2 is orthogonal to both. Layer b: all
    # three tasks agree. Layer c: tasks 0 and 2 are slightly opposed (cos −0.01).
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.01, (1 - 0.01**2) ** 0.5]])
    conflicts = LayerConflicts(["a", "b", "c"], threshold=0.0)
    fractions = conflicts.add([a @ a.T, b @ b.T, c @ c.T])
    torch.testing.assert_close(fractions, torch.tensor([1 / 3, 0.0, 1 / 3], dtype=torch.float64))
    conflicts.add([b @ b.T, b @ b.T, b @ b.T])
    assert conflicts.scores() == {"a": 1 / 6, "b": 0.0, "c": 1 / 6}
    # with S = −0.05 the slight conflict on layer c no longer counts
    strict = LayerConflicts(["a", "b", "c"], threshold=-0.05)
    strict.add([a @ a.T, b @ b.T, c @ c.T])
    assert strict.scores() == {"a": 1 / 3, "b": 0.0, "c": 0.0}
    restored = LayerConflicts(["a", "b", "c"])
    restored.load_state_dict(conflicts.state_dict())
    assert restored.scores() == conflicts.scores()


def test_a_batch_of_updates_gives_what_the_updates_give_one_by_one():
    from mtrl.conflict import LayerConflicts

    generator = torch.Generator().manual_seed(0)
    jacobians = torch.randn(6, 3, 4, 5, generator=generator)  # [updates, layers, K, n]
    layer_grams = jacobians @ jacobians.transpose(-1, -2)
    grams = layer_grams.sum(dim=1)
    weights = torch.rand(6, 4, generator=generator)
    kept = torch.tensor([True, False, True, True, False, True])
    batched = conflict_stats(grams, weights)
    for update in range(6):
        single = conflict_stats(grams[update], weights[update])
        for name, value in vars(single).items():
            torch.testing.assert_close(getattr(batched, name)[update], value, msg=name)
    one_by_one, together = LayerConflicts(["a", "b", "c"]), LayerConflicts(["a", "b", "c"])
    for update in range(6):
        one_by_one.add(list(layer_grams[update]), weight=kept[update])
    fractions = together.add(layer_grams, weight=kept)
    assert fractions.shape == (6, 3)
    assert together.scores() == one_by_one.scores()
    torch.testing.assert_close(together.counts, one_by_one.counts)
