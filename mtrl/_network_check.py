"""``check_network``: the network contract, checked on a network class (see
:func:`mtrl.testing.check_network`, which this module provides)."""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtrl._host_watch import watch_host
from mtrl.agents.mtsac import actor_task_loss, critic_task_loss
from mtrl.agents.networks import INITS, Actor, Critic, read_critic_embedding
from mtrl.aggregators import GradOPS
from mtrl.backward import MultiTaskBackward
from mtrl.jacobian import per_task_gradients_grouped, per_task_gradients_loop

# The properties check_network checks, as its failures name them.
CONSTRUCTOR = "built from the network arguments"
LAYOUTS = "output of shape [members, ..., out], alike in every layout"
SHARED_LAYERS = "shared layers hold every shared parameter"
GROUPED = "per-task gradients from one grouped pass"
OWN_TASK = "task-specific parameters reached by one task each"
EVERY_MODE = "the same update in every mode"
NETWORK_HOST = "no host read in an update"
NETWORK_SEED = "deterministic under a seed"
NETWORK_STATE = "state_dict round trip"
NETWORK_DEVICES = "same output on every device"

# A small case: K tasks of B rows, states of S values, actions of A values.
_TASKS, _BATCH, _STATE, _ACTIONS = 3, 4, 5, 2
_HIDDEN = (8, 9)
_MEMBERS = 2
# The modes whose updates are compared with those of K backward passes, with GradOPS: its
# weights depend on every entry of the Gram matrix.
_MODES = {
    "grouped": {"per_task_gradients": "grouped"},
    "gram": {"per_task_gradients": "gram"},
    "gram, backward": {"per_task_gradients": "gram", "gram_update": "backward"},
    "auto": {"per_task_gradients": "auto"},
    "vmap": {"per_task_gradients": "vmap"},
}
# Relative tolerances in float64: within one device only the summation order differs; between
# devices the kernels do too.
_RTOL, _DEVICE_RTOL = 1e-9, 1e-6
# The methods a layer of shared_layers() forms per-task gradients with.
_LAYER_METHODS = ("per_task_gradients", "task_gram", "task_gram_by_rows", "combined_gradients")


@dataclasses.dataclass
class NetworkReport:
    """What :func:`check_network` checked of a network that passed, and what did not apply."""

    network: str
    checked: list[str] = dataclasses.field(default_factory=list)
    not_applicable: dict[str, str] = dataclasses.field(default_factory=dict)


def check_network(
    network: type[nn.Module],
    options: dict[str, Any] | None = None,
    devices: Sequence[str | torch.device] | None = None,
    seed: int = 0,
) -> NetworkReport:
    """Check that the network class ``network``, built with its ``options``, keeps the network
    contract that mtrl's own architectures keep; raise an ``AssertionError`` that names the first
    property it breaks.

    The network is built as the agent builds it, as the body of a small twin critic and of an
    actor (in float64, so that rounding cannot hide a wrong gradient), and checked for:

    - :data:`CONSTRUCTOR`: ``network(state_dim, out_dim, *, members, num_tasks, hidden, init,
      head_bound, **options)`` builds, under every ``init``;
    - :data:`LAYOUTS`: ``forward(state, task_onehot, layout)`` gives ``[members, ..., out]``,
      finite, and the same rows in the ``"grouped"``, ``"mixed"`` and ``"single"`` layouts;
    - :data:`SHARED_LAYERS`: every layer of ``shared_layers()`` forms per-task gradients
      (``per_task_gradients``, ``task_gram``, ``task_gram_by_rows``, ``combined_gradients``),
      and every parameter is in one of them or in a task-specific module (``shared = False``);
    - :data:`GROUPED`: the per-task gradients of one grouped pass equal those of K backward
      passes;
    - :data:`OWN_TASK`: no entry of a task-specific parameter gets a gradient from two tasks;
    - :data:`NETWORK_HOST`: an update reads nothing back to the host and takes nothing from it;
    - :data:`EVERY_MODE`: GradOPS's update is the same from stored gradients (one pass or
      vmap), Gram-first (either update) and K backward passes;
    - :data:`NETWORK_SEED`: after ``torch.manual_seed``, two builds hold the same parameters;
    - :data:`NETWORK_STATE`: a build under another seed that loads the first's ``state_dict``
      (through ``torch.save`` and ``torch.load(weights_only=True)``) gives the same output;
    - :data:`NETWORK_DEVICES`: the same output on the CPU and on each of ``devices`` (default:
      the accelerator, if any).

    Torch's global CPU generator is left as it was.
    """
    options = dict(options or {})
    report = NetworkReport(network.__name__)
    if devices is None:
        present = torch.accelerator.is_available()
        devices = [torch.accelerator.current_accelerator()] if present else []
    with torch.random.fork_rng(devices=[]):
        check = _Checks(network, options, seed)
        check.constructor()
        check.layouts()
        check.shared_layers()
        check.grouped_and_own()
        check.host()
        check.every_mode()
        check.seed_and_state()
        report.checked += [
            CONSTRUCTOR,
            LAYOUTS,
            SHARED_LAYERS,
            GROUPED,
            OWN_TASK,
            NETWORK_HOST,
            EVERY_MODE,
            NETWORK_SEED,
            NETWORK_STATE,
        ]
        if not devices:
            report.not_applicable[NETWORK_DEVICES] = "no device other than the CPU here"
        else:
            for device in devices:
                check.device(torch.device(device))
            report.checked.append(NETWORK_DEVICES)
    return report


def _close(got: Tensor, expected: Tensor, rtol: float) -> bool:
    """Equal to ``rtol`` of the larger entry (rounding of the largest is shared by all)."""
    got, expected = got.detach().double().cpu(), expected.detach().double().cpu()
    if got.shape != expected.shape or not torch.isfinite(got).all():
        return False
    scale = max(float(expected.abs().max()), float(got.abs().max()), 1e-300)
    return float((got - expected).abs().max()) <= rtol * scale


class _Checks:
    def __init__(self, network: type[nn.Module], options: dict[str, Any], seed: int) -> None:
        self.network, self.options, self.seed = network, options, seed
        self.label = network.__name__
        generator = torch.Generator().manual_seed(seed)
        onehot = torch.eye(_TASKS, dtype=torch.float64)[:, None].expand(-1, _BATCH, -1)
        self.onehot = onehot
        state = torch.randn(_TASKS, _BATCH, _STATE, generator=generator, dtype=torch.float64)
        self.state = state
        self.obs = torch.cat([state, onehot], dim=-1)
        uniform = torch.rand(_TASKS, _BATCH, _ACTIONS, generator=generator, dtype=torch.float64)
        self.actions = uniform * 2 - 1
        self.target = torch.randn(_TASKS, _BATCH, generator=generator, dtype=torch.float64)
        self.noise = torch.randn(_TASKS, _BATCH, _ACTIONS, generator=generator, dtype=torch.float64)
        self.alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def require(self, condition: bool, prop: str, detail: str) -> None:
        if not condition:
            raise AssertionError(f"{self.label}: {prop} fails: {detail}")

    # -- builds -----------------------------------------------------------------------------

    def body(self, init: str = "he", seed: int | None = None) -> nn.Module:
        torch.manual_seed(self.seed if seed is None else seed)
        return self.network(
            _STATE,
            3,
            members=_MEMBERS,
            num_tasks=_TASKS,
            hidden=list(_HIDDEN),
            init=init,
            head_bound=1e-3,
            **self.options,
        ).double()

    def critic(self, dtype: torch.dtype = torch.float64) -> Critic:
        torch.manual_seed(self.seed)
        critic = Critic(
            _STATE + _TASKS,
            _ACTIONS,
            list(_HIDDEN),
            num_tasks=_TASKS,
            init="he",
            network=self.network,
            network_options=self.options,
        )
        return critic.to(dtype)

    def cases(self):
        """(what, model, loss, task inputs, shared inputs) of the critic and the actor."""
        critic = self.critic()
        yield "critic", critic, critic_task_loss, (self.obs, self.actions, self.target), (critic,)
        torch.manual_seed(self.seed)
        actor = Actor(
            _STATE + _TASKS,
            _ACTIONS,
            list(_HIDDEN),
            num_tasks=_TASKS,
            init="he",
            network=self.network,
            network_options=self.options,
        ).double()
        read_critic_embedding(actor, critic)
        frozen = {name: p.detach() for name, p in critic.named_parameters()}
        inputs = (self.obs, self.noise, self.alpha)
        yield "actor", actor, actor_task_loss, inputs, (actor, critic, frozen)

    # -- the checks -------------------------------------------------------------------------

    def constructor(self) -> None:
        for init in INITS:
            try:
                body = self.body(init)
            except TypeError as error:
                arguments = "(state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound)"
                self.require(False, CONSTRUCTOR, f"{arguments} with init={init!r}: {error}")
            self.require(
                callable(getattr(body, "shared_layers", None)),
                CONSTRUCTOR,
                "it has no shared_layers() method",
            )

    def layouts(self) -> None:
        body = self.body()
        with torch.no_grad():
            grouped = body(self.state, self.onehot, "grouped")
            expected = (_MEMBERS, _TASKS, _BATCH, 3)
            shape = tuple(grouped.shape)
            self.require(shape == expected, LAYOUTS, f"grouped: shape {shape}, not {expected}")
            self.require(bool(torch.isfinite(grouped).all()), LAYOUTS, "grouped: not finite")
            rows = grouped.reshape(_MEMBERS, _TASKS * _BATCH, 3)
            order = torch.randperm(_TASKS * _BATCH, generator=torch.Generator().manual_seed(1))
            state = self.state.reshape(-1, _STATE)[order]
            mixed = body(state, self.onehot.reshape(-1, _TASKS)[order], "mixed")
            self.require(
                _close(mixed, rows[:, order], _RTOL),
                LAYOUTS,
                "the mixed layout (rows of all tasks, shuffled) gives other outputs than the "
                "grouped one",
            )
            for task in range(_TASKS):
                single = body(self.state[task], self.onehot[task], "single")
                self.require(
                    _close(single, grouped[:, task], _RTOL),
                    LAYOUTS,
                    f"the single layout (task {task}'s rows) gives other outputs than the "
                    "grouped one",
                )

    def shared_layers(self) -> None:
        body = self.body()
        layers = body.shared_layers()
        modules = {id(module) for module in body.modules()}
        covered: dict[int, str] = {}
        for label, layer in layers.items():
            self.require(id(layer) in modules, SHARED_LAYERS, f"{label} is not a submodule")
            lacking = [name for name in _LAYER_METHODS if not callable(getattr(layer, name, None))]
            self.require(not lacking, SHARED_LAYERS, f"{label} has no {', '.join(lacking)}")
            for param in layer.parameters(recurse=False):
                covered[id(param)] = label
        own = {
            id(param)
            for module in body.modules()
            if getattr(module, "shared", True) is False
            for param in module.parameters(recurse=False)
        }
        outside = [
            name
            for name, param in body.named_parameters()
            if id(param) not in covered and id(param) not in own
        ]
        self.require(
            not outside,
            SHARED_LAYERS,
            f"{outside} are neither in a layer of shared_layers() nor in a task-specific module "
            "(shared = False): the one-pass modes cannot form their per-task gradients",
        )
        both = [name for name, p in body.named_parameters() if id(p) in covered and id(p) in own]
        self.require(not both, SHARED_LAYERS, f"{both} are both shared and task-specific")

    def grouped_and_own(self) -> None:
        for what, model, loss_fn, inputs, shared in self.cases():
            params = dict(model.named_parameters())
            reference, _ = per_task_gradients_loop(loss_fn, params, inputs, shared)
            stored, own, _ = per_task_gradients_grouped(loss_fn, model, params, inputs, shared)
            task_specific = model.task_specific_parameters()
            for name, expected in reference.items():
                if name in task_specific:
                    got, expected = own.get(name), expected.mean(dim=0)
                else:
                    got = stored.get(name)
                self.require(
                    got is not None and _close(got, expected, _RTOL),
                    GROUPED,
                    f"{what}: {name} differs from K backward passes",
                )
            for name in task_specific:
                reached = (reference[name] != 0).sum(dim=0)
                self.require(
                    bool((reached <= 1).all()),
                    OWN_TASK,
                    f"{what}: entries of {name} get gradients from {int(reached.max())} tasks",
                )

    def every_mode(self) -> None:
        for what, model, loss_fn, inputs, shared in self.cases():
            reference, reference_grads = _step_once(
                model, loss_fn, inputs, shared, per_task_gradients="loop"
            )
            for mode, settings in _MODES.items():
                try:
                    result, grads = _step_once(model, loss_fn, inputs, shared, **settings)
                except Exception as error:  # vmap refuses a forward that branches on values
                    detail = f"{what}, {mode}: {type(error).__name__}: {error}"
                    raise AssertionError(f"{self.label}: {EVERY_MODE} fails: {detail}") from error
                self.require(
                    _close(result.weights, reference.weights, _RTOL),
                    EVERY_MODE,
                    f"{what}, {mode}: weights {result.weights.tolist()}, K backward passes "
                    f"{reference.weights.tolist()}",
                )
                for name, expected in reference_grads.items():
                    self.require(
                        _close(grads[name], expected, _RTOL),
                        EVERY_MODE,
                        f"{what}, {mode}: the update of {name} differs from that of K backward "
                        "passes",
                    )

    def host(self) -> None:
        critic = self.critic(torch.float32)
        optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3, fused=True)
        step = MultiTaskBackward(critic, optimizer, GradOPS())
        inputs = (self.obs.float(), self.actions.float(), self.target.float())
        step(critic_task_loss, inputs, (critic,))  # the first makes any state made lazily
        with watch_host() as found:
            step(critic_task_loss, inputs, (critic,))
        self.require(not found, NETWORK_HOST, "\n".join(found))

    def seed_and_state(self) -> None:
        first, again = self.body(), self.body()
        for (name, param), other in zip(first.named_parameters(), again.parameters(), strict=True):
            self.require(
                torch.equal(param, other),
                NETWORK_SEED,
                f"{name} differs between two builds after torch.manual_seed({self.seed})",
            )
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        restored = self.body(seed=self.seed + 1)
        restored.load_state_dict(torch.load(buffer, weights_only=True))
        with torch.no_grad():
            expected = first(self.state, self.onehot, "grouped")
            got = restored(self.state, self.onehot, "grouped")
        self.require(
            torch.equal(got, expected),
            NETWORK_STATE,
            "a build under another seed that loads the state_dict gives other outputs",
        )

    def device(self, device: torch.device) -> None:
        body = self.body()
        with torch.no_grad():
            expected = body(self.state, self.onehot, "grouped")
            moved = copy.deepcopy(body).to(device)
            got = moved(self.state.to(device), self.onehot.to(device), "grouped")
        self.require(
            _close(got, expected, _DEVICE_RTOL),
            NETWORK_DEVICES,
            f"the output on {device} differs from the CPU's",
        )


def _step_once(model, loss_fn, inputs, shared, **modes):
    """One GradOPS step of a copy of ``model``: the result and the gradients it wrote (the zero
    learning rate leaves the weights as they were)."""
    model = copy.deepcopy(model)
    shared = (model, *shared[1:])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = MultiTaskBackward(model, optimizer, GradOPS(), **modes)(loss_fn, inputs, shared)
    return result, {name: p.grad for name, p in model.named_parameters()}
