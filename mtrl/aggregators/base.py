"""The aggregator interface, its registry, and the helper that applies one to a Jacobian.

Every method here turns the K×K Gram matrix ``G = J Jᵀ`` of the per-task gradients into task
weights ``w`` of shape ``[K]``; the shared update is then ``Jᵀ w``. Working on ``G`` keeps the
solve tiny (K×K) whatever the number of parameters, and leaves ``J`` to be computed once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from mtrl.jacobian import combine, task_gram
from mtrl.plugins import METHODS, PluginError, discover


class NonFiniteGradientError(ValueError):
    """The per-task gradients hold NaN or infinity, so no update can be computed from them."""


@dataclasses.dataclass
class Aggregator:
    """Base class: subclasses are dataclasses whose fields are the method's hyperparameters."""

    # The config name: the name of the method's entry point in the group ``mtrl.methods``, which
    # mtrl sets when it loads the class. Declaring it in the class too names the method where
    # it is used directly (its errors, check_method's report); the two must agree.
    name: ClassVar[str]
    # Whether ``weights`` reads the Gram matrix. Methods that do not (``mean``) can also run
    # from one backward pass of their weighted losses, without per-task gradients.
    needs_gram: ClassVar[bool] = True
    # Whether the weights come from the losses alone: then no per-task gradient is ever
    # computed, and ``observe`` sees each task's loss before and after every step.
    loss_based: ClassVar[bool] = False
    # Whether the method takes logarithms of the losses: then it cannot weight losses that may be
    # negative, such as SAC's actor loss, and MTSAC uses it for the critic only.
    requires_positive_losses: ClassVar[bool] = False
    # Whether rescaling every task's gradient (for a loss-based method, every loss) by one
    # positive factor leaves the weights unchanged, so that the update scales with the gradients;
    # mtrl.testing.check_method holds a method that declares it to it.
    scale_invariant: ClassVar[bool] = False
    # Whether the weights need values read back to the host (Aligned-MTL's eigendecomposition
    # checks its result there), which makes a GPU update wait: check_method reports the reads of
    # a method that declares it instead of failing it.
    reads_host: ClassVar[bool] = False

    def weights(self, gram: Tensor | None, losses: Tensor | None = None) -> Tensor:
        """Task weights ``w`` (shape ``[K]``, dtype of ``gram``): the update is ``Jᵀ w``."""
        raise NotImplementedError

    def observe(self, losses_before: Tensor, losses_after: Tensor) -> None:
        """Learn from a step's effect on the task losses (loss-based methods only)."""

    def reset(self) -> None:
        """Forget any state kept across calls (nothing, for stateless methods)."""

    def generators(self) -> list[torch.Generator]:
        """The generators the method draws from (a CUDA graph must know them)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers describing the state kept across calls, for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")

    @property
    def hparams(self) -> dict[str, Any]:
        """The method's hyperparameters (its constructor arguments), for logs and configs."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


def available() -> list[str]:
    """The config names of every method: mtrl's own and those of installed packages (the
    entry points ``mtrl.methods``, see :mod:`mtrl.plugins`), sorted."""
    return sorted(discover(METHODS))


def aggregator_class(name: str) -> type[Aggregator]:
    """The method registered under a config name; the error lists the valid names, and names
    the package of a method that cannot be used."""
    methods = discover(METHODS)
    if name not in methods:
        raise ValueError(
            f"unknown method {name!r}; valid methods: {', '.join(available())} (a method of "
            "another package is listed once that package is installed)"
        )
    entry = methods[name]
    cls = entry.load()
    method = isinstance(cls, type) and issubclass(cls, Aggregator)
    if not (method and dataclasses.is_dataclass(cls)):
        raise PluginError(
            f"the method {name!r} of the package {entry.package} is {entry.value}, which is not "
            "a dataclass subclassing mtrl.aggregators.Aggregator"
        )
    declared = cls.__dict__.get("name", name)
    if declared != name:
        raise PluginError(
            f"the package {entry.package} declares the method {name!r} as {entry.value}, whose "
            f"class names itself {declared!r}: the two names must agree"
        )
    cls.name = name  # the entry point's name is the method's
    return cls


def make_aggregator(name: str, **hparams: Any) -> Aggregator:
    """Build a method from its config name and hyperparameters; errors say what is valid."""
    cls = aggregator_class(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"method {name!r} has no hyperparameter {unknown}; valid: {valid}")
    return cls(**hparams)


def normalized_gram(gram: Tensor) -> Tensor:
    """``gram`` in float64, divided by its mean diagonal so that the small solves are scale-free.

    Gradients from 1e-12 to 1e12 then give the same well-conditioned K×K problem; every method
    below returns weights that do not depend on this scale, so the update scales with ``J``.
    """
    gram = gram.to(torch.float64)
    scale = gram.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    return gram / scale


def check_finite(gram: Tensor) -> None:
    """Raise if ``gram`` holds a NaN or infinity (one host sync on a K×K tensor)."""
    if not bool(torch.isfinite(gram).all()):
        raise NonFiniteGradientError(
            "per-task gradients are not finite (NaN or inf in the Gram matrix); "
            "no aggregated update can be computed from them"
        )


class Aggregation(NamedTuple):
    """The combined gradient ``Jᵀ w``, the task weights ``w``, and the Gram matrix ``J Jᵀ``."""

    update: Tensor
    weights: Tensor
    gram: Tensor


def solve_weights(
    weights: Callable[[Tensor, Tensor | None], Tensor],
    gram: Tensor,
    losses: Tensor | None,
    finite: Tensor | None = None,
) -> Tensor:
    """A method's task weights for ``gram`` (``weights`` is its :meth:`Aggregator.weights`).

    Where ``finite`` is a false 0-d flag (a step that will be skipped, decided on the device),
    the method sees orthogonal unit gradients instead of NaNs, so that neither its weights nor
    its state become NaN.
    """
    if finite is not None:
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        gram = torch.where(finite, gram, eye)
    return weights(gram, losses)


def aggregate(
    aggregator: Aggregator, jacobian: Tensor, losses: Tensor | None = None
) -> Aggregation:
    """Apply ``aggregator`` to the per-task gradients ``jacobian`` of shape ``[K, P]``, the way
    a training step does (:class:`mtrl.backward.MultiTaskBackward`, with stored gradients).

    Raises :class:`NonFiniteGradientError` on NaN or infinite gradients. The Gram matrix comes
    back too, so that diagnostics (:mod:`mtrl.conflict`) need no second product.
    """
    if jacobian.ndim != 2:
        raise ValueError(f"expected a Jacobian of shape [K, P], got {tuple(jacobian.shape)}")
    gram = task_gram(jacobian)
    check_finite(gram)
    weights = solve_weights(aggregator.weights, gram, losses)
    return Aggregation(combine(weights, jacobian), weights, gram)
