"""Methods and networks from installed packages, found through Python entry points.

A package makes a method usable as ``method=my-method`` by declaring, in its ``pyproject.toml``::

    [project.entry-points."mtrl.methods"]
    my-method = "my_package:MyMethod"

and a network usable as ``network=my-net`` in the group ``mtrl.networks``, as pytest and Hydra
find their plug-ins. mtrl declares its own methods and networks in the same groups, so that one
registry serves both. A name declared twice is refused, naming both packages; an entry point
that fails to import is refused when it is loaded, naming its package.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from importlib import metadata
from typing import Any

from torch import nn

__all__ = ["METHODS", "NETWORKS", "PluginError"]

METHODS = "mtrl.methods"
NETWORKS = "mtrl.networks"
OWN = "mtrl"
# The agent's plain networks: one MLP over the whole observation, task id included, to which
# Recon's task-specific layers apply. They take no entry point and their names are taken.
PLAIN_NETWORKS = ("mlp", "multi-head")
# What the agent passes every network's constructor, besides the network's own options.
NETWORK_ARGUMENTS = ("members", "num_tasks", "hidden", "init", "head_bound")
# Passed only to a network whose constructor names it: "critic" or "actor", for a network that is
# built differently for each (BroNet's widths, and the actor reading the critic's embedding).
ROLE = "role"
_KINDS = {METHODS: "method", NETWORKS: "network"}


class PluginError(ValueError):
    """An entry point mtrl cannot use: its name is taken, it fails to import, or it is not what
    its group asks for."""


@dataclasses.dataclass(frozen=True)
class Plugin:
    """One entry point of ``mtrl.methods`` or ``mtrl.networks``, and the package declaring it."""

    group: str
    name: str
    value: str  # "module:attribute"
    distribution: str
    version: str

    @property
    def kind(self) -> str:
        return _KINDS[self.group]

    @property
    def builtin(self) -> bool:
        return self.distribution == OWN

    @property
    def package(self) -> str:
        return f"{self.distribution} {self.version}"

    def source(self) -> dict[str, str]:
        """The package as a run's protocol records it."""
        return {"distribution": self.distribution, "version": self.version}

    def load(self) -> Any:
        try:
            return metadata.EntryPoint(self.name, self.value, self.group).load()
        except Exception as error:  # a package's import may raise anything
            raise PluginError(
                f"the {self.kind} {self.name!r} of the package {self.package} ({self.value}) "
                f"fails to import: {type(error).__name__}: {error}; fix or uninstall "
                f"{self.distribution}"
            ) from error


def _clash(first: Plugin, second: Plugin) -> str:
    if second.builtin:
        first, second = second, first
    if first.builtin:
        return (
            f"the package {second.package} declares the {second.kind} {second.name!r} "
            f"({second.value}), a name mtrl's own {first.kind} has: give it another name in "
            f"that package's entry points, or uninstall {second.distribution}"
        )
    return (
        f"the packages {first.package} and {second.package} both declare the {first.kind} "
        f"{first.name!r}: uninstall one of them, or rename the entry point in one"
    )


@functools.cache
def discover(group: str) -> dict[str, Plugin]:
    """Every entry point of ``group`` (:data:`METHODS` or :data:`NETWORKS`), by name.

    Raises :class:`PluginError` for a name declared twice or taken by a plain network, and when
    mtrl's own entry points are missing (an installation made before they existed).
    """
    found: dict[str, Plugin] = {}
    for entry in metadata.entry_points(group=group):
        dist = entry.dist
        plugin = Plugin(
            group,
            entry.name,
            entry.value,
            dist.name if dist is not None else "(unknown package)",
            dist.version if dist is not None else "?",
        )
        if group == NETWORKS and entry.name in PLAIN_NETWORKS:
            raise PluginError(
                f"the package {plugin.package} declares the network {entry.name!r}, the name of "
                f"mtrl's plain network: give it another name, or uninstall {plugin.distribution}"
            )
        if entry.name in found and found[entry.name] != plugin:
            raise PluginError(_clash(found[entry.name], plugin))
        found[entry.name] = plugin
    if not any(plugin.builtin for plugin in found.values()):
        # Python reads the first metadata of a distribution on the path: in a checkout, that
        # can be a mtrl.egg-info folder left by a build older than the entry points.
        first = metadata.distribution(OWN)
        where = getattr(first, "_path", None)
        raise PluginError(
            f"mtrl's own {_KINDS[group]}s are missing from the entry points {group!r} of its "
            f"metadata{f' at {where}' if where else ''}, which an older installation or build "
            "left: reinstall mtrl (pip install -e . in a checkout, after removing a stale "
            "mtrl.egg-info folder there)"
        )
    return found


def plugin(group: str, name: str) -> Plugin:
    """The entry point ``name`` of ``group``; a :class:`KeyError` if there is none."""
    return discover(group)[name]


def network_names() -> list[str]:
    """Every network ``network=`` takes: the plain ones, then the others, sorted."""
    return [*PLAIN_NETWORKS, *sorted(discover(NETWORKS))]


def network_class(name: str) -> type[nn.Module]:
    """The network registered as ``name`` (not a plain one), checked against the constructor
    every network takes: ``(state_dim, out_dim, *, members, num_tasks, hidden, init,
    head_bound, **options)``."""
    networks = discover(NETWORKS)
    if name not in networks:
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(network_names())}")
    entry = networks[name]
    cls = entry.load()
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PluginError(
            f"the network {name!r} of the package {entry.package} is {entry.value}, which is "
            "not a torch.nn.Module subclass"
        )
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    lacking = [arg for arg in NETWORK_ARGUMENTS if arg not in parameters and not takes_any]
    if lacking or len([p for p in parameters.values() if p.kind <= p.POSITIONAL_OR_KEYWORD]) < 2:
        raise PluginError(
            f"the network {name!r} of the package {entry.package} ({entry.value}) does not take "
            f"the arguments every network is built with: (state_dim, out_dim, *, "
            f"{', '.join(NETWORK_ARGUMENTS)}, **options)"
        )
    return cls


def network_options(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """A network's own options: its constructor's keyword parameters beyond those every
    network takes and ``role``, by name."""
    skipped = {"self", "state_dim", "out_dim", *NETWORK_ARGUMENTS, ROLE}
    return {
        name: parameter
        for name, parameter in inspect.signature(cls).parameters.items()
        if name not in skipped
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def takes_role(cls: type[nn.Module]) -> bool:
    """Whether the network is told if it is the critic's or the actor's (see :data:`ROLE`)."""
    return ROLE in inspect.signature(cls).parameters


def network_source(name: str) -> dict[str, str]:
    """The package network ``name`` comes from, as a run's protocol records it."""
    if name in PLAIN_NETWORKS:
        return {"distribution": OWN, "version": metadata.version(OWN)}
    return plugin(NETWORKS, name).source()
