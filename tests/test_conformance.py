"""Every built-in method passes mtrl.testing.check_method, the suite a plug-in's tests call, and
a method that breaks one of its promises fails it with that promise named."""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from mtrl.aggregators import Aggregator, Mean, available, make_aggregator
from mtrl.testing import (
    DEVICES,
    FINITE,
    HOST,
    PERMUTATION,
    SCALE,
    SEED,
    SHAPE,
    STATE,
    MethodReport,
    check_method,
)

PROPERTIES = {SHAPE, FINITE, SCALE, PERMUTATION, HOST, DEVICES, STATE, SEED}


@pytest.fixture(autouse=True)
def one_thread():
    """K×K problems gain nothing from intra-op threads, and lose to their synchronisation on a
    busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def report(name: str) -> MethodReport:
    """The built-in method's report, made once for the tests that read it."""
    return check_method(make_aggregator(name))


@pytest.mark.parametrize("name", available())
def test_every_built_in_method_keeps_the_promises(name):
    method = make_aggregator(name)
    found = report(name)
    assert found.method == name
    # every property was either checked or said not to apply, with the reason
    assert set(found.checked) | set(found.not_applicable) == PROPERTIES
    assert not set(found.checked) & set(found.not_applicable)
    assert {SHAPE, FINITE, SEED} <= set(found.checked)
    assert (SCALE in found.checked) == method.scale_invariant
    assert (HOST in found.checked) != method.reads_host


def test_what_applies_follows_what_a_method_declares_and_does():
    assert "scale_invariant" in report("nash-mtl").not_applicable[SCALE]
    # Aligned-MTL's eigendecomposition waits for the device: reported, not failed
    assert report("aligned-mtl").host_reads == {"aten::_linalg_eigh"}
    assert "reads_host" in report("aligned-mtl").not_applicable[HOST]
    assert "random" in report("pcgrad").not_applicable[PERMUTATION]
    assert STATE in report("pcgrad").checked  # its generator's state
    assert "no state" in report("gradops").not_applicable[STATE]
    assert {SCALE, PERMUTATION, STATE} <= set(report("famo").checked)


def test_the_device_check_gives_every_copy_the_same_draws():
    # against the CPU itself, so that it runs here: the draws of two copies of a method seeded
    # from torch's global generator are made alike
    report = check_method(make_aggregator("sdmgrad-os"), devices=["cpu"])
    assert DEVICES in report.checked


def test_the_method_and_the_global_random_state_are_left_alone():
    method = make_aggregator("gradvac", seed=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_method(method)
    assert torch.equal(torch.rand(3), expected)
    assert method.targets.numel() == 0  # the checks ran on copies


# -- methods that break a promise ---------------------------------------------------------------


def fails(method: Aggregator, prop: str, detail: str = "") -> None:
    with pytest.raises(
        AssertionError, match=rf"{method.name}: {re.escape(prop)} fails: .*{detail}"
    ):
        check_method(method)


@dataclasses.dataclass
class ShrinksWithTheGradients(Mean):
    """Claims scale invariance, but its weights shrink as the gradients grow."""

    name: ClassVar[str] = "shrinking"
    scale_invariant: ClassVar[bool] = True

    def weights(self, gram, losses=None):
        return super().weights(gram) / (1 + gram.diagonal().mean())


@dataclasses.dataclass
class InverseNorms(Aggregator):
    """Weights inversely proportional to the gradients' norms: infinite on a zero gradient."""

    name: ClassVar[str] = "inverse-norms"

    def weights(self, gram, losses=None):
        norms = gram.diagonal().sqrt()
        return norms.mean() / norms


@dataclasses.dataclass
class ReadsTheTrace(Mean):
    """Reads a value back to the host in every update."""

    name: ClassVar[str] = "reads-the-trace"

    def weights(self, gram, losses=None):
        trace = gram.trace().item()
        return super().weights(gram) * (1.0 if trace >= 0 else -1.0)


@dataclasses.dataclass
class DeclaresItsRead(ReadsTheTrace):
    name: ClassVar[str] = "declares-its-read"
    reads_host: ClassVar[bool] = True


@dataclasses.dataclass
class Column(Mean):
    """Weights of shape [K, 1]."""

    name: ClassVar[str] = "column"

    def weights(self, gram, losses=None):
        return super().weights(gram)[:, None]


@dataclasses.dataclass
class AlwaysDouble(Mean):
    """Weights in float64 whatever the Gram matrix's dtype."""

    name: ClassVar[str] = "always-double"

    def weights(self, gram, losses=None):
        return super().weights(gram).double()


@dataclasses.dataclass
class FirstTaskFirst(Aggregator):
    """Weights by the tasks' positions, not by their gradients."""

    name: ClassVar[str] = "first-task-first"
    scale_invariant: ClassVar[bool] = True

    def weights(self, gram, losses=None):
        positions = torch.arange(gram.shape[0], 0, -1, dtype=gram.dtype, device=gram.device)
        return positions / positions.sum()


@dataclasses.dataclass
class ForgetsItsState(Aggregator):
    """A running mean of the squared gradient norms that a checkpoint does not restore."""

    name: ClassVar[str] = "forgets-its-state"
    scale_invariant: ClassVar[bool] = True
    _running: Tensor | None = dataclasses.field(default=None, init=False)

    def weights(self, gram, losses=None):
        norms = gram.diagonal().double()
        self._running = norms if self._running is None else 0.5 * (self._running + norms)
        scale = self._running.sum().clamp_min(torch.finfo(torch.float64).tiny)
        return (self._running / scale).to(gram.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._running is None else {"running": self._running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # the bug: the running mean starts over


@dataclasses.dataclass
class DrawsFromPython(Mean):
    """Says it draws from a torch generator, but draws from Python's."""

    name: ClassVar[str] = "draws-from-python"
    scale_invariant: ClassVar[bool] = False
    _generator: torch.Generator = dataclasses.field(default_factory=torch.Generator, init=False)

    def generators(self) -> list[torch.Generator]:
        return [self._generator]

    def weights(self, gram, losses=None):
        return super().weights(gram) * (0.5 + random.random())


@dataclasses.dataclass
class LossSoftmax(Aggregator):
    """Loss-based: the softmax of the losses, which is not scale invariant though declared so."""

    name: ClassVar[str] = "loss-softmax"
    needs_gram: ClassVar[bool] = False
    loss_based: ClassVar[bool] = True
    scale_invariant: ClassVar[bool] = True

    def weights(self, gram, losses=None):
        return torch.softmax(losses, dim=0)


@dataclasses.dataclass
class RootsOfLosses(LossSoftmax):
    """Loss-based: takes square roots of the losses, yet does not declare
    requires_positive_losses."""

    name: ClassVar[str] = "roots-of-losses"
    scale_invariant: ClassVar[bool] = False

    def weights(self, gram, losses=None):
        roots = losses.sqrt()
        return roots / roots.sum()


def test_weights_that_shrink_with_the_gradients_break_scale_invariance():
    fails(ShrinksWithTheGradients(), SCALE, "gradients × 1e-12")


def test_infinite_weights_on_a_zero_gradient_are_caught():
    fails(InverseNorms(), FINITE, "a zero gradient")


def test_a_read_back_to_the_host_is_caught_unless_declared():
    fails(ReadsTheTrace(), HOST, "Tensor.item")
    report = check_method(DeclaresItsRead())
    assert "Tensor.item" in report.host_reads


def test_weights_of_the_wrong_shape_or_dtype_are_caught():
    fails(Column(), SHAPE, r"torch.Size\(\[2, 1\]\)")
    fails(AlwaysDouble(), SHAPE, "torch.float64")


def test_weights_tied_to_task_positions_break_permutation_equivariance():
    fails(FirstTaskFirst(), PERMUTATION, "tasks in the order")


def test_a_state_that_a_checkpoint_does_not_restore_is_caught():
    fails(ForgetsItsState(), STATE, "the restored copy")


def test_draws_that_no_seed_fixes_are_caught():
    fails(DrawsFromPython(), SEED, "under the same seed")


def test_loss_based_methods_get_their_own_checks():
    fails(LossSoftmax(), SCALE, "losses × 0.001")
    fails(RootsOfLosses(), FINITE, "negative losses")
