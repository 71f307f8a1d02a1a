"""The multi-task architectures of the field, each built from shared layers that form per-task
gradients (:class:`~mtrl.agents.networks.EnsembleLinear`,
:class:`~mtrl.agents.networks.EnsembleBias`), task-specific tables and parameter-free
operations, so that any method can combine their tasks' gradients.

Every network takes the state without the task id (``state``, ``[..., S]``) and the task's
one-hot (``[..., K]``), in any of the batch layouts of :class:`~mtrl.agents.networks.EnsembleMLP`,
and returns ``[members, ..., out]`` (``members``: the critic ensemble's size, or 1). Each is built
as the JAX Meta-World+ code builds it (rainx0r/metaworld-algorithms, ``metaworld_algorithms/nn``,
the code behind the published figures): layer inputs, widths, routing, where the ReLUs sit and
every initialisation. Each ``configs/network/*.yaml`` cites the file and lines it follows.
BroNet, BRC's network, follows BRC's own code instead (naumix/BiggerRegularizedCategorical).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from mtrl.agents.architectures.bronet import BroNet
from mtrl.agents.architectures.care import CARE
from mtrl.agents.architectures.common import TaskDense, TaskTable, prefixed
from mtrl.agents.architectures.film import FiLM
from mtrl.agents.architectures.moore import MOORE, gram_schmidt
from mtrl.agents.architectures.paco import PaCo, PaCoLinear
from mtrl.agents.architectures.soft_modules import SoftModules
from mtrl.plugins import ROLE, network_class, network_options

__all__ = [
    "ARCHITECTURES",
    "CARE",
    "MOORE",
    "BroNet",
    "FiLM",
    "PaCo",
    "PaCoLinear",
    "SoftModules",
    "TaskDense",
    "TaskTable",
    "build",
    "check_options",
    "gram_schmidt",
    "prefixed",
]

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "moore": MOORE,
    "soft-modules": SoftModules,
    "care": CARE,
    "paco": PaCo,
    "film": FiLM,
    "bronet": BroNet,
}


def check_options(kind: str | type[nn.Module], options: dict) -> None:
    """Refuse an unknown network or an unknown option, naming it; and for mtrl's own
    architectures a count or size that is not a positive integer (a temperature not a positive
    number). ``kind`` is a name registered in the entry points ``mtrl.networks`` (see
    :mod:`mtrl.plugins`), or a network class itself. Nothing is built."""
    cls = network_class(kind) if isinstance(kind, str) else kind
    label = kind if isinstance(kind, str) else cls.__name__
    known = network_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{label}: no option {unknown}; valid: {', '.join(known) or 'none'}")
    if cls not in ARCHITECTURES.values():
        return  # another package's network checks its own values when it is built
    for name, value in options.items():
        positive = not isinstance(value, bool) and isinstance(value, int | float) and value > 0
        integer = isinstance(known[name].default, int)
        if not positive or not math.isfinite(value) or (integer and not isinstance(value, int)):
            kind_of = "an integer >= 1" if integer else "a positive number"
            raise ValueError(f"{label}: {name} must be {kind_of}, got {value!r}")


def build(
    kind: str | type[nn.Module],
    state_dim: int,
    out_dim: int,
    *,
    members: int,
    num_tasks: int,
    hidden: Sequence[int],
    init: str,
    head_bound: float,
    **options,
) -> nn.Module:
    """The network ``kind`` (a name in the entry points ``mtrl.networks``, such as those of
    :data:`ARCHITECTURES`, or a network class) with its own ``options`` (and ``role``, for a
    network that takes it)."""
    check_options(kind, {name: value for name, value in options.items() if name != ROLE})
    return (network_class(kind) if isinstance(kind, str) else kind)(
        state_dim,
        out_dim,
        members=members,
        num_tasks=num_tasks,
        hidden=list(hidden),
        init=init,
        head_bound=head_bound,
        **options,
    )
