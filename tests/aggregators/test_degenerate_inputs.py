"""Every method gives a defined, finite answer on degenerate inputs, and refuses non-finite ones."""

import dataclasses

import pytest
import torch

from mtrl.aggregators import NonFiniteGradientError, aggregate, available, make_aggregator
from tests.aggregators.defining_properties import PROPERTIES
from tests.strategies import build_jacobian, cosines_with

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Gram-based methods; loss-based ones (FAMO) never see gradients and are tested on losses.
METHODS = [name for name in available() if not make_aggregator(name).loss_based]
# How the update scales when every gradient is multiplied by s: as s**degree. Nash-MTL's
# update has norm √K whatever the gradients' size (α_i (Gα)_i = 1); every other method is
# scale-equivariant.
SCALE_DEGREE = {"nash-mtl": 0}
# Methods whose update an extra zero-gradient task leaves unchanged, up to the mean's 1/K for
# PCGrad: GradOPS and PCGrad act on each task separately; Nash-MTL gives the zero gradient
# weight 0 without coupling it to the others, and for Aligned-MTL it is a dropped null direction.
IGNORE_A_ZERO_TASK = {"gradops": 1.0, "pcgrad": 4 / 5, "nash-mtl": 1.0, "aligned-mtl": 1.0}


def seeded(name):
    """A fixed seed for methods that draw random numbers, so that a fresh copy (``twin``) draws
    the same ones."""
    fields = {f.name for f in dataclasses.fields(make_aggregator(name))}
    return {"seed": 0} if "seed" in fields else {}


@pytest.fixture(params=METHODS)
def method(request):
    return make_aggregator(request.param, **seeded(request.param))


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
    if method.name in IGNORE_A_ZERO_TASK:
        reference, _, _ = aggregate(twin(method), jacobian)
        scale = IGNORE_A_ZERO_TASK[method.name]
        torch.testing.assert_close(update, scale * reference, rtol=1e-6, atol=1e-9)
    if method.name == "mgda":
        # the zero gradient is the shortest point of the hull (the barrier solve leaves a norm
        # of about sqrt(K × its final barrier weight 1e-12) relative to the gradients)
        assert update.norm() < 1e-5 * jacobian.norm(dim=1).max()


def test_all_gradients_zero(method):
    update, weights, _ = aggregate(method, torch.zeros(3, 20))
    assert torch.equal(update, torch.zeros(20))
    assert torch.isfinite(weights).all()


def test_every_method_has_its_defining_property_checked():
    assert set(PROPERTIES) == set(METHODS)


@pytest.mark.parametrize(
    "shape", [(5, 40), (12, 4)], ids=["rank-deficient", "more-tasks-than-params"]
)
def test_rank_deficient_gradients(method, shape):
    tasks, params = shape
    mixing = torch.randn(3, params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    low_rank = build_jacobian(tasks, 3, seed=2, structure="gaussian") @ mixing
    jacobian = low_rank if tasks < params else build_jacobian(tasks, params, 2, "gaussian")
    update, weights, _ = aggregate(method, jacobian)
    assert torch.isfinite(update).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(update, weights @ jacobian)
    # what the method promises, checked on the gradients by an independent computation; a
    # fresh copy of the method replays the random draws of this first call
    PROPERTIES[method.name](twin(method), jacobian, update, weights)


@pytest.mark.xfail(
    strict=True,
    reason="IMGrad reads cm = cos(g0, g_MGDA) from a g_MGDA that is rounding noise at a "
    "Pareto-stationary point, so cm comes out 0 or 1 by chance instead of the documented 0",
)
def test_imgrad_takes_no_alignment_at_a_pareto_stationary_point():
    for seed in (3, 22, 23):  # twelve gradients in four dimensions: zero lies in their hull
        jacobian = build_jacobian(12, 4, seed, "gaussian")
        update, weights, _ = aggregate(make_aggregator("imgrad"), jacobian)
        PROPERTIES["imgrad"](make_aggregator("imgrad"), jacobian, update, weights)


@pytest.mark.parametrize("exponent", [-12, -6, 6, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_tiny_scales(method, exponent, dtype):
    jacobian = build_jacobian(10, 200, seed=4, structure="uneven_norms")
    reference, _, _ = aggregate(twin(method), jacobian)
    scale = 10.0**exponent
    update, _, _ = aggregate(method, (jacobian * scale).to(dtype))
    assert torch.isfinite(update).all()
    tolerance = 1e-4 if dtype == torch.float32 else 1e-8
    expected = scale ** SCALE_DEGREE.get(method.name, 1) * reference
    assert (update.double() - expected).norm() <= tolerance * expected.norm()


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
