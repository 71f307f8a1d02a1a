"""Methods and networks of other packages, found through the entry points mtrl.methods and
mtrl.networks: named, built, typed and recorded as mtrl's own are, and refused with the package's
name when they cannot be used.

The packages here are distributions written into a folder on the path for one test (metadata
and a module), as pip would install them; tests/test_plugin_example.py installs a real one."""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException

from mtrl import plugins
from mtrl.agents.architectures import ARCHITECTURES, build
from mtrl.aggregators import Aggregator, available, make_aggregator
from mtrl.aggregators import __all__ as exported
from mtrl.aggregators.base import aggregator_class
from mtrl.cli import schema
from mtrl.cli.settings import ConfigError, train_settings
from mtrl.compare import format_table, load_run, summarize
from mtrl.plugins import METHODS, NETWORKS, PluginError, discover
from tests.cli.conftest import train_config
from tests.test_compare import write_run

# A method of its own: every task's weight is `share`, its check a range, and `mode` a Literal
# (which a Hydra structured config cannot hold).
METHOD = """
import dataclasses
from typing import Literal

import torch

from mtrl.aggregators import Aggregator


@dataclasses.dataclass
class Shares(Aggregator):
    share: float = 0.5
    mode: Literal["flat", "also-flat"] = "flat"
    label: str = "plain"

    def __post_init__(self):
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.mode not in ("flat", "also-flat"):
            raise ValueError(f"mode must be flat or also-flat, got {self.mode!r}")

    def weights(self, gram, losses=None):
        return torch.full((gram.shape[0],), self.share, dtype=gram.dtype, device=gram.device)


@dataclasses.dataclass
class Named(Shares):
    name = "other-name"


@dataclasses.dataclass(kw_only=True)
class Required(Shares):
    strength: float


class NotAMethod:
    pass
"""
NETWORK = """
from torch import nn


class NoArguments(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(name, entry_points)`` puts a distribution ``name`` 0.1 on the path for this
    test, with the modules ``fake_methods`` and ``fake_networks``; ``entry_points`` maps each
    group to its {name: value}."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_methods.py").write_text(METHOD)
    (site / "fake_networks.py").write_text(NETWORK)

    def install(name: str, entry_points: dict[str, dict[str, str]]) -> Path:
        dist = site / f"{name.replace('-', '_')}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        sections = [
            f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
            for group, entries in entry_points.items()
        ]
        (dist / "entry_points.txt").write_text("\n".join(sections))
        importlib.invalidate_caches()
        discover.cache_clear()
        return site

    monkeypatch.syspath_prepend(str(site))
    yield install
    discover.cache_clear()
    for module in ("fake_methods", "fake_networks"):
        sys.modules.pop(module, None)


@pytest.fixture
def config_store():
    """The method and network groups of Hydra's config store as they were, afterwards."""
    repo = ConfigStore.instance().repo
    saved = {group: dict(repo[group]) for group in ("method", "network")}
    yield
    for group, nodes in saved.items():
        repo[group] = nodes


def command_line(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
    )


# -- mtrl's own ------------------------------------------------------------------------------


def test_mtrls_methods_are_its_entry_points_and_each_class_is_named_by_its_own():
    methods = discover(METHODS)
    own = {
        getattr(sys.modules["mtrl.aggregators"], name)
        for name in exported
        if isinstance(getattr(sys.modules["mtrl.aggregators"], name), type)
    }
    own = {cls for cls in own if issubclass(cls, Aggregator) and cls is not Aggregator}
    assert all(entry.distribution == "mtrl" for entry in methods.values())
    assert {aggregator_class(name) for name in methods} == own
    assert all(aggregator_class(name).__dict__["name"] == name for name in methods)


def test_mtrls_networks_are_its_entry_points():
    networks = discover(NETWORKS)
    assert all(entry.distribution == "mtrl" for entry in networks.values())
    assert {name: plugins.network_class(name) for name in networks} == ARCHITECTURES
    assert plugins.network_names() == ["mlp", "multi-head", *sorted(ARCHITECTURES)]


# -- a package's method ------------------------------------------------------------------------


def test_a_packages_method_is_listed_built_and_typed(install):
    install("fake-methods", {METHODS: {"shares": "fake_methods:Shares"}})
    assert "shares" in available() and "gradops" in available()
    method = make_aggregator("shares", share=0.25)
    assert type(method).name == "shares"  # the entry point's name
    assert method.weights(torch.eye(3)).tolist() == [0.25] * 3
    with pytest.raises(ValueError, match=r"unknown method 'sharez'; valid methods: .*shares"):
        make_aggregator("sharez")
    config = schema.method_schema("shares")
    hints = typing.get_type_hints(config)
    assert hints["share"] is float and hints["label"] is str
    assert hints["mode"] is typing.Any  # a Literal: the method checks it itself
    defaults = {spec.name: spec.default for spec in dataclasses.fields(config)}
    assert defaults == {"name": "shares", "share": 0.5, "mode": "flat", "label": "plain"}


def test_a_packages_method_runs_from_the_command_line_config(install, config_store):
    install("fake-methods", {METHODS: {"shares": "fake_methods:Shares"}})
    assert schema.register() == []
    settings = train_settings(train_config("method=shares", "method.share=0.75"))
    assert (settings.method, settings.method_kwargs["share"]) == ("shares", 0.75)
    from mtrl.cli.train import protocol

    record = protocol(settings)
    assert record["provided_by"] == {
        "method": {"distribution": "fake-methods", "version": "0.1"},
        "network": {"distribution": "mtrl", "version": record["versions"]["mtrl"]},
    }
    with pytest.raises(ConfigCompositionException) as error:
        train_config("method=shares", "method.share=abc")
    assert "full_key: method.share" in str(error.value.__cause__)


def test_a_value_the_method_refuses_is_named_with_its_key_and_package(install, config_store):
    install("fake-methods", {METHODS: {"shares": "fake_methods:Shares"}})
    schema.register()
    # two keys changed, one refused: only that one is named
    config = train_config("method=shares", "method.label=other", "method.share=2")
    with pytest.raises(ConfigError) as error:
        train_settings(config)
    assert str(error.value) == (
        "method.share=2.0 refused by the method 'shares' of fake-methods 0.1: "
        "share must be in (0, 1], got 2.0"
    )
    with pytest.raises(ConfigError, match=r"^method.mode=sharp refused by the method 'shares'"):
        train_settings(train_config("method=shares", "method.mode=sharp"))


def test_a_hyperparameter_without_a_default_must_be_given(install, config_store):
    install("fake-methods", {METHODS: {"required": "fake_methods:Required"}})
    schema.register()
    with pytest.raises(ConfigError, match=r"method.strength must be given"):
        train_settings(train_config("method=required"))
    settings = train_settings(train_config("method=required", "method.strength=2"))
    assert settings.method_kwargs["strength"] == 2.0


# -- what cannot be used -------------------------------------------------------------------


def test_a_name_mtrl_has_is_refused_naming_the_package(install):
    install("fake-methods", {METHODS: {"gradops": "fake_methods:Shares"}})
    with pytest.raises(PluginError, match=r"fake-methods 0.1 declares the method 'gradops'"):
        available()


def test_a_name_two_packages_declare_is_refused_naming_both(install):
    install("fake-methods", {METHODS: {"shares": "fake_methods:Shares"}})
    install("more-methods", {METHODS: {"shares": "fake_methods:Named"}})
    with pytest.raises(PluginError, match=r"both declare the method 'shares'") as error:
        available()
    assert "fake-methods 0.1" in str(error.value) and "more-methods 0.1" in str(error.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing_module:Shares", r"fails to import: ModuleNotFoundError: .*'missing_module'"),
        ("fake_methods:Missing", r"fails to import: AttributeError"),
        ("fake_methods:NotAMethod", r"not a dataclass subclassing mtrl.aggregators.Aggregator"),
        ("fake_methods:Named", r"whose class names itself 'other-name'"),
    ],
)
def test_a_method_that_cannot_be_used_is_refused_naming_the_package(install, value, message):
    install("fake-methods", {METHODS: {"broken": value}})
    assert "broken" in available()  # listed: only using it needs its import
    with pytest.raises(PluginError, match=message) as error:
        make_aggregator("broken")
    assert "fake-methods 0.1" in str(error.value)


def test_a_network_that_cannot_be_used_is_refused_naming_the_package(install):
    install("fake-networks", {NETWORKS: {"tiny": "fake_networks:NoArguments"}})
    with pytest.raises(PluginError, match=r"fake-networks 0.1 .* does not take the arguments"):
        build("tiny", 4, 2, members=1, num_tasks=3, hidden=[8], init="he", head_bound=1e-3)
    with pytest.raises(ValueError, match=r"unknown network 'tinny'; valid: mlp, .*tiny"):
        build("tinny", 4, 2, members=1, num_tasks=3, hidden=[8], init="he", head_bound=1e-3)


def test_a_network_named_as_the_plain_one_is_refused(install):
    install("fake-networks", {NETWORKS: {"mlp": "fake_networks:NoArguments"}})
    with pytest.raises(PluginError, match=r"fake-networks 0.1 declares the network 'mlp'"):
        plugins.network_names()


@pytest.mark.parametrize(
    ("entry_points", "message"),
    [
        ({METHODS: {"pcgrad": "fake_methods:Shares"}}, "declares the method 'pcgrad'"),
        ({METHODS: {"shares": "missing_module:Shares"}}, "'shares' of the package"),
    ],
    ids=["name-taken", "fails-to-import"],
)
def test_mtrl_train_refuses_to_start_naming_the_package(install, tmp_path, entry_points, message):
    site = install("fake-methods", entry_points)
    result = command_line("method=gradops", site=site, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "fake-methods 0.1" in result.stderr
    assert "Traceback" not in result.stderr


# -- comparing ---------------------------------------------------------------------------------


def test_mtrl_compare_names_the_package_of_a_method_not_mtrls(tmp_path):
    source = {"distribution": "fake-methods", "version": "0.1"}
    own = {"distribution": "mtrl", "version": "0.1.0"}
    for seed in (0, 1):
        curve, finals = [0.1, 0.2, 0.3], [0.4, 0.3, 0.2]
        write_run(tmp_path, "shares", seed, curve, finals, provided_by={"method": source})
        write_run(tmp_path, "gradops", seed, curve, finals, provided_by={"method": own})
    write_run(tmp_path, "mean", 0, [0.1, 0.2, 0.3], [0.4, 0.3, 0.2])  # before provided_by
    runs = [load_run(path) for path in sorted(tmp_path.iterdir())]
    table = format_table(summarize(runs, reps=100)).splitlines()
    rows = {line.split()[2]: line for line in table[1:]}
    assert "shares (fake-methods 0.1)" in rows["shares"]
    assert "(" not in rows["gradops"] and "(" not in rows["mean"]
