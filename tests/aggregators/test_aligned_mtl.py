import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl.aggregators import AlignedMTL, aggregate, make_aggregator
from tests.strategies import jacobians


@settings(max_examples=40, deadline=None)
@given(jacobian=jacobians(), scale=st.sampled_from(["min", "median", "rmse"]))
def test_aligned_gradients_have_a_gram_matrix_proportional_to_identity(jacobian, scale):
    """Ĵ = B J has Ĵ Ĵᵀ = σ² P, P the projector onto the kept eigen-directions of G: σ² I
    (condition number 1) when G has full numerical rank, as these matrices generically do."""
    method = AlignedMTL(scale=scale)
    gram = jacobian @ jacobian.T
    aligned = method.alignment_matrix(gram) @ jacobian
    aligned_gram = aligned @ aligned.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    kept = eigenvalues > method.rank_tol * len(gram) * eigenvalues.max()
    sigma2 = {
        "min": eigenvalues[kept].min(),
        "median": eigenvalues[kept].median(),
        "rmse": eigenvalues[kept].mean(),
    }[scale]
    projector = aligned_gram / sigma2
    torch.testing.assert_close(projector @ projector, projector, rtol=0, atol=1e-6)
    assert float(projector.trace()) == pytest.approx(int(kept.sum()), abs=1e-6)
    if kept.all():
        torch.testing.assert_close(
            projector, torch.eye(len(gram), dtype=gram.dtype), rtol=0, atol=1e-6
        )
    # the update is the sum of the aligned gradients
    update, _, _ = aggregate(method, jacobian)
    torch.testing.assert_close(update, aligned.sum(dim=0), rtol=1e-7, atol=1e-9 * update.norm())


def test_two_tasks_by_hand():
    # orthogonal g1 = (1, 0), g2 = (0, 2): σ = 1, B = diag(1, ½), the aligned gradients are the
    # unit vectors and the update (1, 1)
    jacobian = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    update, weights, _ = aggregate(AlignedMTL(), jacobian)
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(update, torch.tensor([1.0, 1.0], dtype=torch.float64))
    # g1 = (1, 0), g2 = (1, 1): G = [[1, 1], [1, 2]] has det 1 and trace 3, so
    # G^½ = (G + I)/√5, G^-½ = [[3, −1], [−1, 2]]/√5 and λ_min = (3 − √5)/2 = σ² with
    # σ = (√5 − 1)/2: weights B 1 = σ (2, 1)/√5 and update σ (3, 1)/√5
    jacobian = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    update, weights, _ = aggregate(AlignedMTL(), jacobian)
    sigma = (math.sqrt(5) - 1) / 2
    torch.testing.assert_close(
        weights, sigma / math.sqrt(5) * torch.tensor([2.0, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        update, sigma / math.sqrt(5) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    )


def test_identical_gradients_are_added():
    # rank 1: B = 1 1ᵀ / K keeps the one direction, and unit task weights give Σ g_i = K g
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    update, weights, _ = aggregate(AlignedMTL(), g.repeat(4, 1))
    torch.testing.assert_close(weights, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(update, 4 * g[0])


@pytest.mark.parametrize("bad", [{"scale": "max"}, {"rank_tol": 0.0}, {"rank_tol": float("nan")}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(ValueError, match=r"^aligned-mtl: "):
        make_aggregator("aligned-mtl", **bad)
