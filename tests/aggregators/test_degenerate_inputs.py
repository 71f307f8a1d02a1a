"""Every method gives a defined, finite answer on degenerate inputs, and refuses non-finite ones."""

import pytest
import torch

from mtrl.aggregators import NonFiniteGradientError, aggregate, available, make_aggregator
from tests.strategies import build_jacobian, cosines_with

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
METHODS = available()


@pytest.fixture(params=METHODS)
def method(request):
    # a fixed seed, so that a fresh copy (``twin``) draws the same random numbers
    return make_aggregator(request.param, **({"seed": 0} if request.param == "pcgrad" else {}))


def twin(method):
    return make_aggregator(method.name, **method.hparams)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_method_runs_in_both_precisions_on_every_device(method, device, dtype):
    jacobian = build_jacobian(10, 300, seed=0, structure="shared_conflict").to(device, dtype)
    update, weights, _ = aggregate(method, jacobian)
    assert update.dtype == weights.dtype == dtype
    assert update.device == weights.device == jacobian.device
    assert weights.shape == (10,)
    reference, _, _ = aggregate(twin(method), jacobian.double().cpu())
    assert (update.double().cpu() - reference).norm() <= 1e-4 * reference.norm()


def test_one_task_moves_along_its_gradient(method):
    gradient = torch.randn(1, 50, dtype=torch.float64)
    update, _, _ = aggregate(method, gradient)
    assert torch.isfinite(update).all()
    assert cosines_with(gradient, update).item() == pytest.approx(1.0)


def test_identical_gradients(method):
    jacobian = torch.randn(1, 50, dtype=torch.float64).repeat(4, 1)
    update, _, _ = aggregate(method, jacobian)
    assert torch.isfinite(update).all()
    if method.name == "gradops":
        # each gradient lies in the span of the others, so every projection vanishes
        assert update.norm() < 1e-5 * jacobian[0].norm()
    else:
        assert cosines_with(jacobian[:1], update).item() == pytest.approx(1.0)


def test_a_zero_gradient_changes_nothing_for_the_others(method):
    jacobian = build_jacobian(4, 60, seed=1, structure="gaussian")
    with_zero = torch.cat([jacobian, torch.zeros(1, 60, dtype=torch.float64)])
    update, weights, _ = aggregate(method, with_zero)
    assert torch.isfinite(update).all() and torch.isfinite(weights).all()
    if method.name in ("gradops", "pcgrad"):
        # both act on each task separately, so an extra zero task only changes the mean's 1/K
        reference, _, _ = aggregate(twin(method), jacobian)
        scale = 4 / 5 if method.name == "pcgrad" else 1.0
        torch.testing.assert_close(update, scale * reference, rtol=1e-6, atol=1e-9)


def test_all_gradients_zero(method):
    update, weights, _ = aggregate(method, torch.zeros(3, 20))
    assert torch.equal(update, torch.zeros(20))
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize(
    "shape", [(5, 40), (12, 4)], ids=["rank-deficient", "more-tasks-than-params"]
)
def test_rank_deficient_gradients(method, shape):
    tasks, params = shape
    low_rank = build_jacobian(tasks, 3, seed=2, structure="gaussian") @ torch.randn(
        3, params, dtype=torch.float64
    )
    jacobian = low_rank if tasks < params else build_jacobian(tasks, params, 2, "gaussian")
    update, weights, _ = aggregate(method, jacobian)
    assert torch.isfinite(update).all() and torch.isfinite(weights).all()
    if method.name == "gradops":
        # every gradient lies in the span of the others: nothing is left after projecting
        largest = jacobian.norm(dim=1).max()
        assert update.norm() < 1e-5 * largest
        assert (jacobian @ update).min() >= -1e-6 * largest**2


@pytest.mark.parametrize("exponent", [-12, -6, 6, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_tiny_scales(method, exponent, dtype):
    jacobian = build_jacobian(10, 200, seed=4, structure="uneven_norms")
    reference, _, _ = aggregate(twin(method), jacobian)
    scale = 10.0**exponent
    update, _, _ = aggregate(method, (jacobian * scale).to(dtype))
    assert torch.isfinite(update).all()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-8
    assert (update.double() / scale - reference).norm() <= tolerance * reference.norm()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gradients_are_refused(method, bad_value):
    jacobian = torch.randn(3, 10)
    jacobian[1, 4] = bad_value
    with pytest.raises(NonFiniteGradientError, match="not finite"):
        aggregate(method, jacobian)


def test_jacobian_of_the_wrong_shape_is_refused(method):
    with pytest.raises(ValueError, match=r"shape \[K, P\]"):
        aggregate(method, torch.randn(10))


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid methods: .*gradops.*pcgrad"):
        make_aggregator("gradopz")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: alpha, eps, ridge"):
        make_aggregator("gradops", c=0.5)
