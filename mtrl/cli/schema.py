"""The training config's schema: every key's type, default range and valid values, declared once.

Hydra composes ``configs/train.yaml`` onto :class:`TrainConfig` (and each method's config onto a
schema made from the method's own dataclass), so a value of the wrong type is refused while the
command line is read, naming the key (``full_key: method.alpha``). :func:`validate` then checks
the declared ranges and choices, before anything is built.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from mtrl import plugins
from mtrl.agents.architectures import ARCHITECTURES
from mtrl.agents.mtsac import (
    ALPHA_LOSSES,
    BATCH_SAMPLINGS,
    CRITIC_LOSSES,
    TASK_LOSS_WEIGHTS,
    TEMPERATURES,
)
from mtrl.agents.networks import INITS, LOG_STD_BOUNDINGS
from mtrl.agents.policies import OPTIMIZERS
from mtrl.agents.reward_normalization import REWARD_NORMALIZATIONS
from mtrl.agents.saving import EARLIER_HYPERPARAMETERS, EARLIER_POLICY_VALUES
from mtrl.aggregators import available
from mtrl.aggregators.base import aggregator_class
from mtrl.backward import GRADIENT_MODES, UPDATE_MODES
from mtrl.envs.benchmarks import (
    BENCHMARKS,
    GOAL_MODES,
    MAX_EPISODE_LENGTH,
    REWARD_VERSIONS,
    VECTOR_STRATEGIES,
    task_names,
)
from mtrl.plugins import (
    PLAIN_NETWORKS,
    PluginError,
    discover,
    network_class,
    network_options,
)


class ConfigError(ValueError):
    """A config value that cannot be run, with what is valid instead."""


@dataclass(frozen=True)
class Interval:
    """Numbers from ``low`` to ``high`` (either may be open or absent); ``integer`` refuses
    fractions, ``optional`` admits null."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            text = f"{kind} in {left}{self.low}, {self.high}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.open_low else '>='} {self.low}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.open_high else '<='} {self.high}"
        else:
            text = kind
        return f"null or {text}" if self.optional else text

    def holds(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or (
            value < self.high or (not self.open_high and value == self.high)
        )


@dataclass(frozen=True)
class OneOf:
    """One of a few names."""

    values: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def holds(self, value: Any) -> bool:
        return value in self.values


@dataclass(frozen=True)
class Each:
    """A list whose entries each satisfy ``rule`` (and that has at least ``least`` of them)."""

    rule: Interval
    least: int = 0

    def describe(self) -> str:
        many = f"at least {self.least} " if self.least else ""
        return f"a list of {many}entries, each {self.rule.describe()}"

    def holds(self, value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) >= self.least
            and all(self.rule.holds(entry) for entry in value)
        )


Rule = Interval | OneOf | Each
COUNT = Interval(low=1, integer=True)  # an integer >= 1
NETWORKS = ("mlp", "multi-head", *ARCHITECTURES)  # mtrl's own; others come from packages


def valid(default: Any, rule: Rule) -> Any:
    """A dataclass field with a default and the rule its values must satisfy."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"valid": rule})
    return field(default=default, metadata={"valid": rule})


@dataclass
class BenchmarkConfig:
    # The task, which depends on the benchmark, is checked by BenchmarkSpec when it is built.
    name: str = valid("mt10", OneOf(BENCHMARKS))
    task: str | None = None
    reward_version: str = valid("v2", OneOf(REWARD_VERSIONS))
    goal_mode: str = valid("resample", OneOf(GOAL_MODES))
    episode_length: int = valid(500, Interval(1, MAX_EPISODE_LENGTH, integer=True))
    # auto: chosen by the machine's cores when the run starts, and kept by the run
    vector_strategy: str = valid("auto", OneOf(("auto", *VECTOR_STRATEGIES)))


@dataclass
class CategoricalConfig:
    atoms: int = valid(101, Interval(low=2, integer=True))
    v_max: float = valid(10.0, Interval(low=0, open_low=True))


@dataclass
class AgentConfig:
    net_arch: list[int] = valid([400, 400, 400], Each(COUNT, least=1))
    actor_task_layers: list[int] = valid([], Each(Interval(low=0, integer=True)))
    critic_task_layers: list[int] = valid([], Each(Interval(low=0, integer=True)))
    n_critics: int = valid(2, COUNT)
    log_std_bounds: list[float] = valid([-20.0, 2.0], Each(Interval(), least=2))
    log_std_bounding: str = valid("clamp", OneOf(LOG_STD_BOUNDINGS))
    init: str = valid("he", OneOf(INITS))
    adam_eps: float = valid(1e-5, Interval(0, 1, open_low=True))
    weight_decay: float = valid(0.0, Interval(0, 1))  # optimizer=adamw only (checked in settings)
    max_grad_norm: float | None = valid(1.0, Interval(low=0, open_low=True, optional=True))
    max_q_value: float | None = valid(None, Interval(low=0, open_low=True, optional=True))
    clip_q_predictions: bool = False  # needs max_q_value (checked in settings)
    learning_rate: float = valid(3e-4, Interval(0, 1, open_low=True))
    alpha_learning_rate: float | None = valid(None, Interval(0, 1, open_low=True, optional=True))
    task_loss_weights: str = valid("none", OneOf(TASK_LOSS_WEIGHTS))
    critic_loss: str = valid("mse", OneOf(CRITIC_LOSSES))  # categorical: not with max_q_value
    categorical: CategoricalConfig = field(default_factory=CategoricalConfig)
    reward_normalization: str = valid("none", OneOf(REWARD_NORMALIZATIONS))
    reset_every: int | None = valid(None, Interval(low=1, integer=True, optional=True))
    gamma: float = valid(0.99, Interval(0, 1))
    tau: float = valid(0.005, Interval(0, 1, open_low=True))
    batch_size_per_task: int = valid(128, COUNT)
    batch_sampling: str = valid("per_task", OneOf(BATCH_SAMPLINGS))
    buffer_size_per_task: int = valid(100_000, COUNT)
    warmup_steps: int = valid(4000, Interval(low=0, integer=True))
    gradient_steps: int = valid(1, COUNT)
    initial_alpha: float = valid(1.0, Interval(0, 1e6, open_low=True))
    temperature: str = valid("per_task", OneOf(TEMPERATURES))
    alpha_betas: list[float] = valid([0.9, 0.999], Each(Interval(0, 1, open_high=True), least=2))
    alpha_loss: str = valid("log_alpha", OneOf(ALPHA_LOSSES))
    target_entropy_scale: float = valid(1.0, Interval(low=0, open_low=True))
    per_task_gradients: str = valid("auto", OneOf(GRADIENT_MODES))
    gram_update: str = valid("products", OneOf(UPDATE_MODES))
    compile: bool = False
    recon_threshold: float = valid(0.0, Interval(-1, 0))


@dataclass
class EvalConfig:
    every: int = valid(50_000, COUNT)
    episodes: int = valid(50, COUNT)
    background: bool | None = None  # None: in a worker process where cores are to spare


@dataclass
class CheckpointConfig:
    every: int = valid(50_000, COUNT)
    keep: int = valid(2, COUNT)
    replay_buffer: bool = True


@dataclass
class TrainConfig:
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    method: Any = MISSING  # typed by the method's own schema (method_schema)
    network: Any = MISSING  # typed by the network's own schema (network_schema)
    agent: AgentConfig = field(default_factory=AgentConfig)
    seed: int = valid(0, Interval(low=0, integer=True))
    device: str = "auto"  # checked by resolve_device: auto, cpu, cuda, cuda:N
    optimizer: str = valid("adam", OneOf(OPTIMIZERS))
    total_steps: int = valid(2_000_000, COUNT)
    resume: str | None = None
    sweep: str | None = None
    preset: str | None = None  # the protocol preset (configs/protocol), recorded in the protocol
    threads: int | None = valid(None, Interval(low=1, integer=True, optional=True))
    progress_bar: bool = True
    verbose: int = valid(0, Interval(0, 2, integer=True))
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Agent keys that earlier versions did not write, with the values that reproduce what their
# runs did (not today's defaults, which may be another recipe's): those their checkpoints held.
EARLIER_AGENT_VALUES = (
    EARLIER_POLICY_VALUES
    | {
        key: EARLIER_HYPERPARAMETERS[key]
        for key in (
            "gram_update",
            "max_grad_norm",
            "max_q_value",
            "clip_q_predictions",
            "alpha_learning_rate",
            "task_loss_weights",
            "critic_loss",
            "reward_normalization",
            "reset_every",
            "batch_sampling",
            "temperature",
            "alpha_betas",
            "alpha_loss",
            "target_entropy_scale",
        )
    }
    | {"categorical": {"atoms": 101, "v_max": 10.0}}
)


def upgrade(config: DictConfig) -> DictConfig:
    """A run's saved config in today's keys, meaning what it meant when it was written: the
    replay capacity over all tasks (``agent.buffer_size``) becomes the same capacity per task,
    ``agent.multi_head`` the network group, and keys that did not exist get the values the run
    used."""
    agent = config.agent
    if "network" not in config:
        config.network = {"name": "multi-head" if agent.get("multi_head") else "mlp"}
    if "multi_head" in agent:
        del agent["multi_head"]
    if "compile_aggregator" in agent:  # the same switch, which on CUDA now captures more
        agent.compile = agent.compile_aggregator
        del agent["compile_aggregator"]
    if "buffer_size" in agent:
        tasks = len(task_names(config.benchmark.name, config.benchmark.get("task")))
        agent.buffer_size_per_task = max(agent.buffer_size // tasks, 1)
        del agent["buffer_size"]
    for key, value in EARLIER_AGENT_VALUES.items():
        if key not in agent:
            agent[key] = value
    return config


def _typed(annotation: Any, default: dataclasses.Field) -> Any:
    """``annotation`` where a Hydra structured config can hold it, else ``Any`` (a
    ``Literal``, say): the method or network then checks the value itself when it is built."""
    copy = field(default=default.default, default_factory=default.default_factory)
    probe = dataclasses.make_dataclass("Probe", [("value", annotation, copy)])
    try:
        OmegaConf.structured(probe)
    except Exception:  # OmegaConf refuses an annotation it cannot hold with several errors
        return Any
    return annotation


def _schema_field(annotation: Any, spec: dataclasses.Field | inspect.Parameter) -> tuple:
    """The config field of a method's hyperparameter or a network's option: its annotation and
    default (``???``, a value to give, where it has none)."""
    if isinstance(spec, inspect.Parameter):
        value = MISSING if spec.default is inspect.Parameter.empty else spec.default
        default = field(default=value)
    elif spec.default_factory is not dataclasses.MISSING:
        default = field(default_factory=spec.default_factory)
    else:
        value = MISSING if spec.default is dataclasses.MISSING else spec.default
        default = field(default=value)
    return spec.name, _typed(annotation, default), default


def method_schema(name: str) -> type:
    """The config node ``method/<name>``: a dataclass with the method's config name and its
    hyperparameters, typed and defaulted as the method's own dataclass declares them (the
    method checks their ranges itself when it is built). Benchmark-specific values, such as
    CAGrad's for MT50, are ``configs/method_benchmark/<name>_<benchmark>.yaml``."""
    cls = aggregator_class(name)
    hints = typing.get_type_hints(cls)
    fields = [("name", str, field(default=name))]
    for spec in dataclasses.fields(cls):
        if spec.init:
            fields.append(_schema_field(hints.get(spec.name, Any), spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)


def network_schema(name: str) -> type:
    """A dataclass with the network's config name and its options, typed and defaulted as its
    constructor declares them (for mtrl's own, ``configs/network/<name>.yaml`` sets the papers'
    values on it)."""
    fields = [("name", str, field(default=name))]
    if name not in PLAIN_NETWORKS:
        cls = network_class(name)
        hints = typing.get_type_hints(cls.__init__)
        for option, parameter in network_options(cls).items():
            fields.append(_schema_field(hints.get(option, Any), parameter))
    return dataclasses.make_dataclass(f"{name.title().replace('-', '')}Network", fields)


def register() -> list[PluginError]:
    """Put the schemas in Hydra's config store: ``train_schema`` for ``configs/train.yaml``,
    ``method/<name>`` for every method (:func:`method_schema`), ``<network>_schema`` in the
    network group for each ``configs/network/<network>.yaml``, and ``network/<name>`` for the
    networks of other packages, which have no YAML file.

    Returns what stopped a package's method or network from being registered, for the command
    line to report (mtrl-train refuses to start then)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    problems = []
    try:
        methods, networks = available(), discover(plugins.NETWORKS)
    except PluginError as error:  # a name declared twice
        return [error]
    for name in methods:
        try:
            store.store(group="method", name=name, node=method_schema(name))
        except PluginError as error:
            problems.append(error)
    for name in [*PLAIN_NETWORKS, *networks]:
        try:
            if name in PLAIN_NETWORKS or networks[name].builtin:
                store.store(group="network", name=f"{name}_schema", node=network_schema(name))
            else:
                store.store(group="network", name=name, node=network_schema(name))
        except PluginError as error:
            problems.append(error)
    return problems


def validate(config: dict[str, Any], schema: type = TrainConfig, prefix: str = "") -> None:
    """Check every value of a composed config (as plain data) against its declared rule."""
    hints = typing.get_type_hints(schema)
    for spec in dataclasses.fields(schema):
        key, value = f"{prefix}{spec.name}", config.get(spec.name)
        rule = spec.metadata.get("valid")
        if rule is not None and not rule.holds(value):
            raise ConfigError(f"{key}={value!r} is not valid: it must be {rule.describe()}")
        if dataclasses.is_dataclass(hints[spec.name]):
            validate(value, hints[spec.name], f"{key}.")
