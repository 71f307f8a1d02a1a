"""Every key of the training config refuses a value of the wrong type and a value out of its
range with a message that names the key and the value, before anything is built."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
import typing

import pytest
from hydra.errors import ConfigCompositionException

from mtrl.agents.architectures import ARCHITECTURES
from mtrl.aggregators import available, make_aggregator
from mtrl.aggregators.base import aggregator_class
from mtrl.cli.schema import Each, Interval, OneOf, TrainConfig
from mtrl.cli.settings import ConfigError, train_settings
from mtrl.plugins import network_options
from tests.cli.conftest import train_config

WRONG_TYPE = {int: "abc", float: "abc", bool: "maybe", list: "abc"}
# Keys whose values are free text that other code checks, with a bad value and what it says.
CHECKED_ELSEWHERE = {
    "device": ("tpu7", "device='tpu7' is not a device; valid: auto, cpu, cuda, cuda:N"),
    "benchmark.task": ("reach-v3", "'mt10' has a fixed task set, so task='reach-v3'"),
}
FREE_TEXT = {"resume", "sweep", "preset"}  # names: any text is one


def leaves(schema: type, prefix: str = ""):
    """(key, type, rule) of every leaf of the schema; ``method`` and ``network`` have schemas
    of their own."""
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind):
            yield from leaves(kind, f"{prefix}{spec.name}.")
        elif spec.name not in ("method", "network"):
            yield f"{prefix}{spec.name}", kind, spec.metadata.get("valid")


def base_type(kind) -> type:
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    return typing.get_origin(options[0]) or options[0]


def out_of_range(rule) -> str:
    """A command-line value that breaks ``rule``."""
    if isinstance(rule, OneOf):
        return "abc"
    if isinstance(rule, Each):
        return "[" + ",".join(["1"] * max(rule.least - 1, 0)) + "]" if rule.least else "[-1]"
    if rule.low is not None:
        return str(rule.low if rule.open_low else rule.low - 1)
    return str(rule.high + 1)


def refusal(*overrides: str) -> str:
    """The message with which composing or checking the config refuses ``overrides``."""
    with pytest.raises((ConfigCompositionException, ConfigError)) as error:
        train_settings(train_config(*overrides))
    return f"{error.value} {error.value.__cause__ or ''}"


def schema_cases():
    for key, kind, rule in leaves(TrainConfig):
        wrong = WRONG_TYPE.get(base_type(kind))
        if wrong is not None:
            yield pytest.param(f"{key}={wrong}", (key, wrong), id=f"{key}-type")
        if rule is not None:
            value = out_of_range(rule)
            # lists come back with their entries converted ([1] as [1.0]): the key says enough
            shown = {Each: f"{key}=", OneOf: f"{key}='{value}'"}.get(type(rule), f"{key}={value}")
            yield pytest.param(f"{key}={value}", (shown, "is not valid"), id=f"{key}-range")
        elif key in CHECKED_ELSEWHERE:
            value, message = CHECKED_ELSEWHERE[key]
            yield pytest.param(f"{key}={value}", (message,), id=f"{key}-value")
        else:
            assert key in FREE_TEXT or base_type(kind) is bool, f"{key} is never checked"


@pytest.mark.parametrize(("override", "expected"), list(schema_cases()))
def test_every_key_refuses_a_bad_value_by_name(override, expected):
    message = refusal(override)
    for fragment in expected:
        assert fragment in message, message


# One value per method hyperparameter that is invalid for that method: the bounds differ
# (CAGrad's c must be below 1, ConicGrad's may be 1; alpha may be any finite number).
METHOD_BAD_VALUES = {
    ("aligned-mtl", "scale"): "max",
    ("aligned-mtl", "rank_tol"): "0",
    ("cagrad", "c"): "1",
    ("cagrad", "rescale"): "3",
    ("cagrad", "smoothing"): "0",
    ("cagrad-fast", "c"): "1",
    ("cagrad-fast", "rescale"): "3",
    ("cagrad-fast", "smoothing"): "1",
    ("cagrad-fast", "groups"): "0",
    ("cagrad-fast", "seed"): "-1",
    ("conicgrad", "c"): "1.5",
    ("conicgrad", "smoothing"): "0",
    ("famo", "lr"): "0",
    ("famo", "gamma"): "-0.1",
    ("famo", "eps"): "0",
    ("gradops", "alpha"): "nan",
    ("gradops", "ridge"): "1",
    ("gradops", "eps"): "0",
    ("gradvac", "beta"): "0",
    ("gradvac", "seed"): "-1",
    ("imgrad", "c"): "-0.5",
    ("imgrad", "rescale"): "-1",
    ("imgrad", "smoothing"): "0",
    ("nash-mtl", "ridge"): "0",
    ("pcgrad", "reduction"): "max",
    ("pcgrad", "seed"): "-1",
    ("sdmgrad", "lmbda"): "-0.5",
    ("sdmgrad-os", "lmbda"): "inf",
    ("sdmgrad-os", "num_samples"): "0",
    ("sdmgrad-os", "seed"): "-1",
}


def method_cases():
    for name in available():
        hints = typing.get_type_hints(aggregator_class(name))
        for spec in dataclasses.fields(aggregator_class(name)):
            if spec.init:
                yield pytest.param(name, spec.name, hints[spec.name], id=f"{name}.{spec.name}")


def test_every_method_hyperparameter_has_an_invalid_value_to_try():
    keys = {(name, key) for name, key, _ in (case.values for case in method_cases())}
    assert keys == set(METHOD_BAD_VALUES)


@pytest.mark.parametrize(("method", "key", "kind"), list(method_cases()))
def test_every_method_hyperparameter_refuses_a_bad_value_by_name(method, key, kind):
    if base_type(kind) is not str:
        message = refusal(f"method={method}", f"method.{key}=abc")
        assert f"full_key: method.{key}" in message and "'abc'" in message
    # a value outside the method's own range: the method names itself, the key and the value
    value = METHOD_BAD_VALUES[method, key]
    message = refusal(f"method={method}", f"method.{key}={value}")
    assert f"{method}: {key} must be" in message, message
    assert f"got {value}" in message or f"got '{value}'" in message, message
    # and the method's default passes the same checks
    default = getattr(make_aggregator(method), key)
    shown = "null" if default is None else default
    train_settings(train_config(f"method={method}", f"method.{key}={shown}"))


def test_a_bad_method_value_ends_the_command_line_with_its_message_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", "method=cagrad", "method.c=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "cagrad: c must be in [0, 1), got 1" in result.stderr
    assert "Traceback" not in result.stderr


def network_cases():
    for name in ARCHITECTURES:
        for option, spec in network_options(ARCHITECTURES[name]).items():
            if spec.default is not inspect.Parameter.empty:
                yield pytest.param(name, option, id=f"{name}.{option}")


@pytest.mark.parametrize(("network", "option"), list(network_cases()))
def test_every_network_option_refuses_a_bad_value_by_name(network, option):
    message = refusal(f"network={network}", f"network.{option}=abc")
    assert f"full_key: network.{option}" in message and "'abc'" in message
    message = refusal(f"network={network}", f"network.{option}=0")
    assert f"network: {network}: {option} must be" in message and "got 0" in message


def test_a_resumed_directory_that_is_no_run_says_so(tmp_path):
    from mtrl.checkpoint import CheckpointError
    from mtrl.cli.train import resume_config

    with pytest.raises(CheckpointError, match=r"is not a run directory: it has no config\.yaml"):
        resume_config(train_config(f"resume={tmp_path}"), tmp_path, {"resume"})


@pytest.mark.parametrize(
    ("override", "replacement"),
    [
        ("agent.multi_head=true", "network=multi-head"),
        ("agent.compile_aggregator=1", "agent.compile"),
    ],
)
def test_a_replaced_key_on_the_command_line_names_its_replacement(override, replacement):
    result = subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", override], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{override.split('=')[0]} was replaced: use {replacement}" in result.stderr


def test_the_schema_rules_describe_what_they_hold():
    assert Interval(0, 1, open_low=True).describe() == "a number in (0, 1]"
    assert Interval(low=1, integer=True, optional=True).describe() == "null or an integer >= 1"
    assert not Interval(0, 1).holds(math.nan) and not Interval(low=1, integer=True).holds(1.5)
    assert Each(Interval(low=1), least=1).holds([3]) and not Each(Interval(low=1)).holds([0])
