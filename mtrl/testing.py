"""Checks that a method, or a multi-task step, keeps the promises mtrl's own keep.

- :func:`check_method` runs a gradient-aggregation method through the properties every built-in
  method has; mtrl's tests call it on each of them, and a plug-in's tests call it on theirs::

      from mtrl.testing import check_method

      def test_my_method_keeps_the_promises():
          check_method(MyMethod(strength=0.5))

- :func:`check_network` checks a network class against the contract every network of the agent
  keeps (its constructor, its layouts, its shared layers' per-task gradients, ...).
- :func:`watch_host` sees what would make a GPU update wait for the host or take data from it.
- :class:`LargeTensors` sees every large tensor an operator allocates, to show that a step never
  holds ``K`` times a layer's worth of per-task gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mtrl._host_watch import kinds, watch_host
from mtrl._network_check import (
    CONSTRUCTOR,
    EVERY_MODE,
    GROUPED,
    LAYOUTS,
    NETWORK_DEVICES,
    NETWORK_HOST,
    NETWORK_SEED,
    NETWORK_STATE,
    OWN_TASK,
    SHARED_LAYERS,
    NetworkReport,
    check_network,
)
from mtrl.agents.networks import EnsembleMLP, MultiTaskNetwork
from mtrl.aggregators.base import Aggregator
from mtrl.backward import MultiTaskBackward

__all__ = [
    "CONSTRUCTOR",
    "DEVICES",
    "EVERY_MODE",
    "FINITE",
    "GROUPED",
    "HOST",
    "LAYOUTS",
    "NETWORK_DEVICES",
    "NETWORK_HOST",
    "NETWORK_SEED",
    "NETWORK_STATE",
    "OWN_TASK",
    "PERMUTATION",
    "SCALE",
    "SEED",
    "SHAPE",
    "SHARED_LAYERS",
    "STATE",
    "LargeTensors",
    "MethodReport",
    "NetworkReport",
    "check_method",
    "check_network",
    "injected_draws",
    "kinds",
    "watch_host",
]

# The properties check_method checks, as its failures name them.
SHAPE = "weights of shape [K]"
FINITE = "finite weights"
SCALE = "scale invariance"
PERMUTATION = "permutation equivariance"
HOST = "no host read in an update"
DEVICES = "same update on every device"
STATE = "state_dict round trip"
SEED = "deterministic under a seed"

# Gradients are rescaled by these factors, the Gram matrix by their squares: far beyond what
# float32 losses produce, within what float32 Gram matrices hold.
GRADIENT_SCALES = (1e-12, 1e12)
# Losses (drawn in [0.5, 2]) are rescaled by these factors for loss-based methods, and the
# weights compared to LOSS_SCALE_RTOL: an ε of up to 1e-8 added to the losses, as FAMO adds,
# moves them by less.
LOSS_SCALES, LOSS_SCALE_RTOL = (1e-3, 1e3), 1e-4
# The numbers of tasks the checks use.
SIZES = (2, 5)
# The number of inputs a method sees in turn where its state may matter.
SEQUENCE = 4
# Relative tolerances: between two runs on one device, only the summation order may differ;
# between devices, the kernels do too.
SAME_DEVICE_RTOL, OTHER_DEVICE_RTOL = 1e-6, 1e-5


@dataclasses.dataclass
class MethodReport:
    """What :func:`check_method` found for a method that passed: the properties it checked,
    those that do not apply with the reason, and the host reads of a method that declares them
    (``reads_host``), by kind."""

    method: str
    checked: list[str] = dataclasses.field(default_factory=list)
    not_applicable: dict[str, str] = dataclasses.field(default_factory=dict)
    host_reads: set[str] = dataclasses.field(default_factory=set)


def check_method(
    method: Aggregator, devices: Sequence[str | torch.device] | None = None, seed: int = 0
) -> MethodReport:
    """Check that ``method`` keeps the promises mtrl's built-in methods keep; raise an
    ``AssertionError`` that names the first property it breaks.

    ``method`` gives the hyperparameters: every check runs on fresh copies made with
    ``dataclasses.replace(method)``, so its own state is left as it is. Gram-based methods are
    given sampled Gram matrices (well-conditioned, rank-deficient, with a zero gradient, with
    duplicated tasks, with gradients at scales 1e-12 and 1e12, all gradients zero), in float32
    and float64; loss-based methods (``loss_based``) sampled losses, and ``observe`` after each.

    - :data:`SHAPE` and :data:`FINITE`: the weights are ``[K]``, in the dtype and on the device
      of the input, and finite on every sample, also after a run through all of them;
    - :data:`SCALE`, for a method that declares ``scale_invariant``: rescaling every gradient
      (for a loss-based method, every loss) leaves the weights unchanged;
    - :data:`PERMUTATION`, for a method that draws no random numbers (``generators()`` is
      empty): permuting the tasks permutes the weights;
    - :data:`HOST`: the method runs inside an update (:class:`~mtrl.backward.MultiTaskBackward`
      on a small network) without reading a value back to the host or taking data from it
      (:func:`watch_host`). A method that declares ``reads_host`` is not failed: its reads are
      reported in :attr:`MethodReport.host_reads`;
    - :data:`DEVICES`: the same draws (:func:`injected_draws`) give the same update, to
      rounding, on the CPU and on each of ``devices`` (default: the accelerator, if any);
    - :data:`STATE`, for a method that keeps state (a non-empty ``state_dict()``): a copy
      restored from its state through ``torch.save`` and ``torch.load(weights_only=True)``
      continues as the original does;
    - :data:`SEED`: after ``torch.manual_seed(seed)``, two fresh copies give the same weights.

    Returns the :class:`MethodReport`. Torch's global CPU generator is left as it was.
    """
    report = MethodReport(method.name)
    if devices is None:
        present = torch.accelerator.is_available()
        devices = [torch.accelerator.current_accelerator()] if present else []
    with torch.random.fork_rng(devices=[]):
        calls = _LossCalls(method, seed) if method.loss_based else _GramCalls(method, seed)
        calls.check_shape_and_finite()
        report.checked += [SHAPE, FINITE]
        if not method.scale_invariant:
            report.not_applicable[SCALE] = "the method does not declare scale_invariant"
        else:
            calls.check_scale_invariance()
            report.checked.append(SCALE)
        if calls.fresh().generators():
            report.not_applicable[PERMUTATION] = "the method draws random numbers"
        else:
            calls.check_permutation()
            report.checked.append(PERMUTATION)
        found = _host_traffic(calls.fresh())
        if method.reads_host:
            report.host_reads = kinds(found)
            report.not_applicable[HOST] = "the method declares reads_host"
        else:
            _require(not found, method, HOST, "\n".join(found))
            report.checked.append(HOST)
        if not devices:
            report.not_applicable[DEVICES] = "no device other than the CPU here"
        else:
            for device in devices:
                calls.check_device(torch.device(device))
            report.checked.append(DEVICES)
        if calls.check_state_round_trip():
            report.checked.append(STATE)
        else:
            report.not_applicable[STATE] = "the method keeps no state"
        calls.check_seed()
        report.checked.append(SEED)
    return report


@contextlib.contextmanager
def injected_draws(seed: int = 0) -> Iterator[None]:
    """Within the block, every draw through ``torch.rand``, ``randn``, ``randint``,
    ``randperm``, ``rand_like``, ``randn_like``, ``multinomial`` and ``bernoulli`` comes from
    one CPU generator seeded with ``seed``, whatever generator or device was asked for, and is
    then moved to that device: the same numbers on every device."""
    cpu = torch.Generator().manual_seed(seed)
    names = ("rand", "randn", "randint", "randperm", "rand_like", "randn_like")
    names += ("multinomial", "bernoulli")
    originals = {name: getattr(torch, name) for name in names}

    def drawn(name: str) -> Callable[..., Tensor]:
        original = originals[name]

        def draw(*args: Any, generator=None, device=None, **kwargs: Any) -> Tensor:
            return original(*args, generator=cpu, **kwargs).to(device)

        return draw

    def drawn_like(name: str) -> Callable[..., Tensor]:
        original = originals[name.removesuffix("_like")]

        def draw(like: Tensor, *, dtype=None, device=None, **kwargs: Any) -> Tensor:
            drawn_here = original(like.shape, generator=cpu, dtype=dtype or like.dtype)
            return drawn_here.to(device or like.device)

        return draw

    def drawn_from(name: str) -> Callable[..., Tensor]:
        original = originals[name]

        def draw(probabilities: Tensor, *args: Any, generator=None, **kwargs: Any) -> Tensor:
            drawn_here = original(probabilities.cpu(), *args, generator=cpu, **kwargs)
            return drawn_here.to(probabilities.device)

        return draw

    for name in names:
        if name.endswith("_like"):
            setattr(torch, name, drawn_like(name))
        elif name in ("multinomial", "bernoulli"):
            setattr(torch, name, drawn_from(name))
        else:
            setattr(torch, name, drawn(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


class LargeTensors(TorchDispatchMode):
    """Within the block, every tensor an operator allocates with at least ``limit`` elements, as
    ``(operator, shape)`` in :attr:`seen` (views of an operator's inputs allocate nothing and are
    left out)::

        with LargeTensors(tasks * layer.weight.numel()) as watch:
            step(loss_fn, task_inputs, shared_inputs)
        assert watch.seen == []
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            fresh = isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
            if fresh and t.numel() >= self.limit:
                self.seen.append((func._schema.name, tuple(t.shape)))
        return out


# -- the checks --------------------------------------------------------------------------------


def _require(condition: bool, method: Aggregator, prop: str, detail: str) -> None:
    if not condition:
        raise AssertionError(f"{method.name}: {prop} fails: {detail}")


def _close(got: Tensor, expected: Tensor, rtol: float) -> bool:
    """Equal to ``rtol`` of the larger norm (weights may all be zero)."""
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    if got.shape != expected.shape or not torch.isfinite(got).all():
        return False
    scale = max(float(expected.norm()), float(got.norm()), 1e-12)
    return float((got - expected).norm()) <= rtol * scale


def _saved_and_loaded(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` written and read back the way checkpoints are."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class _Calls:
    """Runs of fresh copies of a method on sampled inputs, and the checks on them. Subclasses
    say what an input is: a Gram matrix, or the losses before and after a step."""

    # what scale invariance rescales, by which factors, and how close the weights stay
    rescaled: str
    scales: tuple[float, ...]
    scale_rtol: float

    def __init__(self, method: Aggregator, seed: int) -> None:
        self.method, self.seed = method, seed
        self.generator = torch.Generator().manual_seed(seed)

    def fresh(self, seed: int | None = None) -> Aggregator:
        """A copy with the method's hyperparameters, made after seeding torch's global CPU
        generator (a method seeded from it then draws alike in every copy)."""
        torch.default_generator.manual_seed(self.seed if seed is None else seed)
        return dataclasses.replace(self.method)

    def fail(self, condition: bool, prop: str, detail: str) -> None:
        _require(condition, self.method, prop, detail)

    def draw(self, size: int, low: float, high: float) -> Tensor:
        uniform = torch.rand(size, generator=self.generator, dtype=torch.float64)
        return low + (high - low) * uniform

    # -- what subclasses define

    def cases(self, size: int) -> dict[str, Any]:
        """Sampled inputs (float64), by case, for the shape and finiteness checks."""
        raise NotImplementedError

    def sequence(self, size: int) -> list:
        """:data:`SEQUENCE` well-behaved inputs in turn (float64)."""
        raise NotImplementedError

    def run(self, method: Aggregator, inputs: list, device: str | torch.device = "cpu") -> list:
        """The method's weights for each input in turn, on ``device``, brought to the CPU."""
        raise NotImplementedError

    def scaled(self, inputs: list, scale: float) -> list:
        raise NotImplementedError

    def permuted(self, inputs: list, order: Tensor) -> list:
        raise NotImplementedError

    def check_case(self, method: Aggregator, case: Any, dtype: torch.dtype, where: str) -> None:
        """Call ``method`` on one case in ``dtype`` and check its weights."""
        raise NotImplementedError

    # -- the checks

    def check_weights(self, weights: Tensor, like: Tensor, where: str) -> None:
        """Weights ``[K]`` in the dtype and on the device of ``like`` (the Gram matrix or the
        losses), and finite."""
        self.fail(
            isinstance(weights, Tensor) and weights.shape == like.shape[:1],
            SHAPE,
            f"got {getattr(weights, 'shape', type(weights))} for {where}",
        )
        self.fail(
            weights.dtype == like.dtype and weights.device == like.device,
            SHAPE,
            f"weights in {weights.dtype} on {weights.device} for {where} on {like.device}",
        )
        self.fail(bool(torch.isfinite(weights).all()), FINITE, f"{weights.tolist()} for {where}")

    def compare(self, got: list, expected: list, prop: str, what: str, rtol: float) -> None:
        for call, (a, b) in enumerate(zip(got, expected, strict=True)):
            detail = f"{what}: call {call + 1} gives {a.tolist()}, not {b.tolist()}"
            self.fail(_close(a, b, rtol), prop, detail)

    def check_shape_and_finite(self) -> None:
        for size in SIZES:
            for dtype in (torch.float32, torch.float64):
                # one copy sees every case in turn, then a well-behaved input: a case may also
                # leave its state unusable
                method, seen = self.fresh(), []
                for case, inputs in [*self.cases(size).items(), ("a later input", None)]:
                    inputs = self.sequence(size)[0] if inputs is None else inputs
                    after = f", after {', '.join(seen)}" if seen else ""
                    self.check_case(method, inputs, dtype, f"{case} (K={size}, {dtype}){after}")
                    seen.append(case)

    def check_scale_invariance(self) -> None:
        inputs = self.sequence(SIZES[-1])
        expected = self.run(self.fresh(), inputs)
        for scale in self.scales:
            got = self.run(self.fresh(), self.scaled(inputs, scale))
            self.compare(got, expected, SCALE, f"{self.rescaled} × {scale:g}", self.scale_rtol)

    def check_permutation(self) -> None:
        inputs = self.sequence(SIZES[-1])
        order = torch.randperm(SIZES[-1], generator=self.generator)
        expected = [weights[order] for weights in self.run(self.fresh(), inputs)]
        got = self.run(self.fresh(), self.permuted(inputs, order))
        what = f"tasks in the order {order.tolist()}"
        self.compare(got, expected, PERMUTATION, what, SAME_DEVICE_RTOL)

    def check_device(self, device: torch.device) -> None:
        inputs = self.sequence(SIZES[-1])
        with injected_draws(self.seed):
            expected = self.run(self.fresh(), inputs)
        with injected_draws(self.seed):
            got = self.run(self.fresh(), inputs, device)
        self.compare(got, expected, DEVICES, f"on {device} against the CPU", OTHER_DEVICE_RTOL)

    def check_state_round_trip(self) -> bool:
        """Whether the method keeps state; raises if a restored copy does not continue alike."""
        inputs = self.sequence(SIZES[-1])
        original = self.fresh()
        self.run(original, inputs[:2])
        state = original.state_dict()
        if not state:
            return False
        try:
            loaded = _saved_and_loaded(state)
        except Exception as error:
            self.fail(False, STATE, f"its state_dict does not load with weights_only: {error}")
        restored = self.fresh(self.seed + 1)
        restored.load_state_dict(loaded)
        expected, got = self.run(original, inputs[2:]), self.run(restored, inputs[2:])
        self.compare(got, expected, STATE, "the restored copy", SAME_DEVICE_RTOL)
        return True

    def check_seed(self) -> None:
        inputs = self.sequence(SIZES[-1])
        expected, got = self.run(self.fresh(), inputs), self.run(self.fresh(), inputs)
        self.compare(got, expected, SEED, "a second copy under the same seed", SAME_DEVICE_RTOL)


class _GramCalls(_Calls):
    """A method that weights per-task gradients from their Gram matrix: an input is a Gram
    matrix and the losses."""

    rescaled, scales, scale_rtol = "gradients", GRADIENT_SCALES, SAME_DEVICE_RTOL

    def cases(self, size: int) -> dict[str, tuple[Tensor, Tensor]]:
        params = 4 * size + 3
        draw = {"generator": self.generator, "dtype": torch.float64}
        well = torch.randn(size, params, **draw)
        rank = max(1, size - 2)
        low = torch.randn(size, rank, **draw) @ torch.randn(rank, params, **draw)
        zero, duplicated = well.clone(), well.clone()
        zero[0] = 0.0
        duplicated[-1] = duplicated[0]
        jacobians = {
            "well-conditioned Gram matrices": well,
            "rank-deficient Gram matrices": low,
            "a zero gradient": zero,
            "duplicated tasks": duplicated,
        }
        jacobians |= {f"gradients at scale {s:g}": s * well for s in GRADIENT_SCALES}
        jacobians["all gradients zero"] = torch.zeros_like(well)
        return {case: (j @ j.T, self.draw(size, 0.5, 1.5)) for case, j in jacobians.items()}

    def sequence(self, size: int) -> list[tuple[Tensor, Tensor]]:
        inputs = []
        for _ in range(SEQUENCE):
            jacobian = torch.randn(size, 4 * size, generator=self.generator, dtype=torch.float64)
            inputs.append((jacobian @ jacobian.T, self.draw(size, 0.5, 1.5)))
        return inputs

    def run(self, method: Aggregator, inputs: list, device: str | torch.device = "cpu") -> list:
        return [method.weights(g.to(device), losses.to(device)).cpu() for g, losses in inputs]

    def scaled(self, inputs: list, scale: float) -> list:
        return [(scale**2 * gram, losses) for gram, losses in inputs]

    def permuted(self, inputs: list, order: Tensor) -> list:
        return [(gram[order][:, order], losses[order]) for gram, losses in inputs]

    def check_case(self, method: Aggregator, case: Any, dtype: torch.dtype, where: str) -> None:
        gram, losses = (part.to(dtype) for part in case)
        self.check_weights(method.weights(gram, losses), gram, where)


class _LossCalls(_Calls):
    """A loss-based method: an input is the losses before and after a step; the method weights
    the first and then observes both."""

    rescaled, scales, scale_rtol = "losses", LOSS_SCALES, LOSS_SCALE_RTOL

    def cases(self, size: int) -> dict[str, tuple[Tensor, Tensor]]:
        before, after = self.sequence(size)[0]
        zero, duplicated = before.clone(), before.clone()
        zero[0] = 0.0
        duplicated[-1] = duplicated[0]
        cases = {
            "spread losses": (before, after),
            "a zero loss": (zero, after),
            "duplicated tasks": (duplicated, after),
        }
        cases |= {f"losses at scale {s:g}": (s * before, s * after) for s in GRADIENT_SCALES}
        cases["a step whose losses were not finite"] = (before, torch.full_like(after, torch.nan))
        if not self.method.requires_positive_losses:
            cases["negative losses"] = (-before, -after)
        return cases

    def sequence(self, size: int) -> list[tuple[Tensor, Tensor]]:
        inputs = []
        for _ in range(SEQUENCE):
            before = self.draw(size, 0.5, 2.0)
            inputs.append((before, before * self.draw(size, 0.5, 1.5)))
        return inputs

    def run(self, method: Aggregator, inputs: list, device: str | torch.device = "cpu") -> list:
        weights = []
        for before, after in inputs:
            before, after = before.to(device), after.to(device)
            weights.append(method.weights(None, before).cpu())
            method.observe(before, after)
        return weights

    def scaled(self, inputs: list, scale: float) -> list:
        return [(scale * before, scale * after) for before, after in inputs]

    def permuted(self, inputs: list, order: Tensor) -> list:
        return [(before[order], after[order]) for before, after in inputs]

    def check_case(self, method: Aggregator, case: Any, dtype: torch.dtype, where: str) -> None:
        before, after = (part.to(dtype) for part in case)
        self.check_weights(method.weights(None, before), before, where)
        method.observe(before, after)
        self.check_weights(method.weights(None, before), before, f"{where}, once observed")


# -- an update to watch ------------------------------------------------------------------------

_TASKS, _BATCH, _FEATURES = 3, 4, 5


class _Regressor(MultiTaskNetwork):
    """A small shared trunk with a head per task, from mtrl's layers."""

    def __init__(self) -> None:
        super().__init__()
        self.body = EnsembleMLP(_FEATURES, (8, 8), 1, num_tasks=_TASKS, task_layers=[2])

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x, None, "grouped")[0, ..., 0]

    def shared_layers(self) -> dict:
        return self.body.shared_layers()


def _squared_errors(params, x: Tensor, y: Tensor, model: _Regressor, layout: str):
    losses = (functional_call(model, params, (x,)) - y).square().mean(dim=-1)
    return losses, losses


def _host_traffic(method: Aggregator) -> list[str]:
    """What the second of two updates of a small network with ``method`` reads back from the
    device or takes from the host (the first makes any state that is made lazily)."""
    generator = torch.Generator().manual_seed(0)
    model = _Regressor()
    # fused, as MTSAC's: it skips a non-finite step on the device (the unfused one reads its
    # step count on the host)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    step = MultiTaskBackward(model, optimizer, method)
    batches = [
        (
            torch.randn(_TASKS, _BATCH, _FEATURES, generator=generator),
            torch.randn(_TASKS, _BATCH, generator=generator),
        )
        for _ in range(2)
    ]
    step(_squared_errors, batches[0], (model,))
    with watch_host() as found:
        step(_squared_errors, batches[1], (model,))
    return found
