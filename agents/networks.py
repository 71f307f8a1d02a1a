"""Actor and twin critic for multi-task SAC, written as plain tensor maths so that they vmap.

``torch.func.vmap`` needs pure functions: no ``torch.distributions`` argument checks and no
data-dependent Python branches. The squashed Gaussian is therefore written out by hand, and the
twin critic is one ensemble whose members share each layer's batched matrix product.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from mtrl.jacobian import task_gram
from mtrl.plugins import network_class, takes_role

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
INITS = ("torch", "he")
LOG_STD_BOUNDINGS = ("tanh", "clamp")
LOG_TWO = math.log(2.0)


def _uniform(shape: Sequence[int], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def hidden_bounds(init: str, fan_in: int) -> tuple[float | None, float | None]:
    """The weight and bias bounds of a hidden layer under ``init`` (``None``: nn.Linear's)."""
    if init == "he":
        return math.sqrt(6 / fan_in), 0.0  # He (Kaiming) uniform for ReLU, zero biases
    return None, None


def head_bounds(init: str, bound: float) -> tuple[float | None, float | None]:
    """The weight and bias bounds of an output layer under ``init`` (``None``: nn.Linear's)."""
    return (bound, bound) if init == "he" else (None, None)


def per_task_tiles(h: Tensor, delta: Tensor, tile: tuple[int, int]) -> Iterator[Tensor]:
    """The per-task weight gradients ``h_kᵀδ_k`` of one affine map, from ``h`` ``[K, in, B]`` and
    ``delta`` ``[K, B, out]``, a tile of ``tile = (rows, columns)`` of the weight at a time:
    ``[K, rows, columns]``, each in the same buffer, valid until the next one. The buffer stays
    in the cache and is never handed back to the allocator between tiles."""
    tasks, fan_in, fan_out = h.shape[0], h.shape[1], delta.shape[2]
    rows, columns = min(tile[0], fan_in), min(tile[1], fan_out)
    buffer = h.new_empty(tasks * rows * columns)
    for top in range(0, fan_in, rows):
        for left in range(0, fan_out, columns):
            block_h = h[:, top : top + rows]  # [K, rows, B]
            block_delta = delta[:, :, left : left + columns]  # [K, B, columns]
            size = (tasks, block_h.shape[1], block_delta.shape[2])
            block = buffer[: math.prod(size)].view(size)
            yield torch.bmm(block_h, block_delta, out=block)


def linear_grams(inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]) -> Tensor:
    """Each member's Gram matrix ``[members, K, K]`` of an affine map's per-task gradients, from
    its grouped inputs ``[members, N, in]`` and output gradients ``[members, N, out]``, never
    holding all of them: the per-task weight gradients are formed a tile at a time
    (:func:`per_task_tiles`), and the tiles' Gram matrices are summed."""
    members, count, fan_in = inputs.shape
    fan_out = output_grads.shape[-1]
    h = inputs.reshape(members, tasks, count // tasks, fan_in).transpose(2, 3)
    delta = output_grads.reshape(members, tasks, count // tasks, fan_out)
    bias = delta.sum(dim=2)
    grams = torch.bmm(bias, bias.transpose(1, 2))
    for member in range(members):
        for block in per_task_tiles(h[member], delta[member], tile):
            grams[member] += task_gram(block)
    return grams


def linear_grams_by_rows(inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
    """The same Gram matrices from the products of rows, never forming a weight gradient:
    ``⟨h_kᵀδ_k, h_lᵀδ_l⟩ = Σ_{i∈k, j∈l} (h_i·h_j)(δ_i·δ_j)``, with a constant 1 appended to
    every ``h_i`` for the bias. Two ``N × N`` products per member with long inner axes
    (torchjd's autogram has this Gramian for linear layers): cheaper than the per-task
    gradients when the batch is small next to the layer."""
    members, rows, _ = inputs.shape
    products = torch.baddbmm(inputs.new_ones(()), inputs, inputs.transpose(1, 2))
    products.mul_(torch.bmm(output_grads, output_grads.transpose(1, 2)))
    per_task = rows // tasks
    return products.view(members, tasks, per_task, tasks, per_task).sum(dim=(2, 4))


class EnsembleLinear(nn.Module):
    """``members`` affine maps applied together, each with ``copies`` (1, or one per task).

    ``weight`` is ``[members, copies, in, out]`` and ``bias`` ``[members, copies, 1, out]``;
    inputs are ``[members, N, in]``. See :class:`EnsembleMLP` for the batch layouts.
    """

    def __init__(
        self,
        members: int,
        copies: int,
        fan_in: int,
        fan_out: int,
        weight_bound: float | None = None,
        bias_bound: float | None = None,
    ) -> None:
        super().__init__()
        default = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation
        weight_bound = default if weight_bound is None else weight_bound
        bias_bound = default if bias_bound is None else bias_bound
        self.weight = _uniform((members, copies, fan_in, fan_out), weight_bound)
        self.bias = _uniform((members, copies, 1, fan_out), bias_bound)

    @property
    def shared(self) -> bool:
        return self.weight.shape[1] == 1

    def forward(self, h: Tensor, task_onehot: Tensor, layout: str, tasks: int) -> Tensor:
        weight, bias = self.weight, self.bias
        if self.shared:
            return torch.baddbmm(bias[:, 0], h, weight[:, 0])
        if layout == "single":
            # The one-hot picks the task's copy exactly (a sum of zeros and one copy), and
            # unlike an index it vmaps over the task axis.
            onehot = task_onehot.reshape(-1, task_onehot.shape[-1])[0]
            return torch.baddbmm(
                torch.einsum("k,ekio->eio", onehot, bias),
                h,
                torch.einsum("k,ekio->eio", onehot, weight),
            )
        if layout == "grouped":
            grouped = h.view(h.shape[0], tasks, -1, h.shape[-1])
            return (torch.einsum("ekbi,ekio->ekbo", grouped, weight) + bias).flatten(1, 2)
        onehot = task_onehot.reshape(-1, task_onehot.shape[-1])
        return torch.einsum("ebi,bk,ekio->ebo", h, onehot, weight) + torch.einsum(
            "bk,ekio->ebo", onehot, bias
        )

    def per_task_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> dict:
        """Each task's gradient of a shared layer, from a grouped batch's inputs ``[E, N, in]``
        and output gradients ``[E, N, out]``: sums of outer products over the task's rows.

        The gradients come back as ``[K, *param.shape]`` views of tensors stored members
        first, which is how one batched product writes them; :func:`mtrl.jacobian.task_gram`
        and :func:`mtrl.jacobian.combine` use them without copies.
        """
        members, rows, fan_in = inputs.shape
        fan_out = output_grads.shape[-1]
        h = inputs.reshape(members * tasks, rows // tasks, fan_in)
        delta = output_grads.reshape(members * tasks, rows // tasks, fan_out)
        weight = torch.bmm(h.transpose(1, 2), delta).view(members, tasks, fan_in, fan_out)
        bias = delta.sum(dim=1).view(members, tasks, 1, fan_out)
        return {
            "weight": weight.transpose(0, 1).unsqueeze(2),
            "bias": bias.transpose(0, 1).unsqueeze(2),
        }

    def task_gram(
        self, inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]
    ) -> Tensor:
        """``J_l J_lᵀ`` of this shared layer's per-task gradients, never holding all of them
        (see :func:`linear_grams`)."""
        return linear_grams(inputs, output_grads, tasks, tile).sum(dim=0)

    def task_gram_by_rows(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        """The same ``J_l J_lᵀ`` from the products of rows (see :func:`linear_grams_by_rows`)."""
        return linear_grams_by_rows(inputs, output_grads, tasks).sum(dim=0)

    def combined_gradients(self, inputs: Tensor, output_grads: Tensor, row_weights: Tensor):
        """The gradient of ``Σ_k w_k L_k`` for this shared layer from the inputs and output
        gradients of ``Σ_k L_k``: each row's output gradient weighted by its task's ``w_k``
        (``row_weights``, one per row), then one product with the inputs. The output gradients
        are weighted in place: they serve nothing else afterwards."""
        members, _, fan_in = inputs.shape
        fan_out = output_grads.shape[-1]
        weighted = output_grads.mul_(row_weights[:, None])
        weight = torch.bmm(inputs.transpose(1, 2), weighted)
        bias = weighted.sum(dim=1)
        return {
            "weight": weight.view(members, 1, fan_in, fan_out),
            "bias": bias.view(members, 1, 1, fan_out),
        }


class EnsembleBias(nn.Module):
    """A vector added to every row, one per ensemble member, shared by all tasks: the bias of a
    dense layer whose weight rows are the tasks' own (a dense layer on the one-hot task id). It
    forms per-task gradients as :class:`EnsembleLinear`'s bias does.

    ``bias`` is ``[members, 1, width]``, drawn U(±``bound``) (0: zeros); inputs are
    ``[members, N, width]``.
    """

    def __init__(self, members: int, width: int, bound: float = 0.0) -> None:
        super().__init__()
        self.bias = _uniform((members, 1, width), bound)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.bias

    @staticmethod
    def _task_sums(output_grads: Tensor, tasks: int) -> Tensor:
        """Each task's gradient ``[members, K, width]``: its rows' output gradients summed."""
        members, rows, width = output_grads.shape
        return output_grads.reshape(members, tasks, rows // tasks, width).sum(dim=2)

    def per_task_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> dict:
        sums = self._task_sums(output_grads, tasks)
        return {"bias": sums.transpose(0, 1).unsqueeze(2)}  # [K, members, 1, width]

    def task_gram(
        self, inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]
    ) -> Tensor:
        sums = self._task_sums(output_grads, tasks)
        return torch.bmm(sums, sums.transpose(1, 2)).sum(dim=0)

    def task_gram_by_rows(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        return self.task_gram(inputs, output_grads, tasks, (1, 1))

    def combined_gradients(self, inputs: Tensor, output_grads: Tensor, row_weights: Tensor):
        """The gradient of ``Σ_k w_k L_k``: each row's output gradient weighted by its task's
        ``w_k`` (``row_weights``, one per row), summed."""
        weighted = output_grads * row_weights[:, None]
        return {"bias": weighted.sum(dim=1, keepdim=True)}


class EnsembleMLP(nn.Module):
    """``members`` ReLU MLPs of the same shape, evaluated with one batched product per layer.

    Layers listed in ``task_layers`` (0 is the first, ``len(hidden)`` the output layer) have one
    copy per task, picked by the one-hot task id of each sample: these are the task-specific
    parameters, every other parameter is shared by all tasks. A per-task output layer is the
    usual multi-head network; other layers can be made task-specific as Recon proposes.

    ``init="torch"`` draws every layer as ``nn.Linear`` does (U(±1/√fan_in)); ``"he"``, as the
    JAX Meta-World+ and parameter-scaling code do, draws hidden weights He-uniform
    (U(±√(6/fan_in))), hidden biases zero and the output layer U(±``head_bound``). With
    ``head_bound=None`` the output layer is drawn as the hidden ones: the sub-networks inside an
    architecture (encoders, experts, trunks) end that way in the reference code, since their
    outputs feed further layers rather than an action or a Q-value.

    ``forward`` takes one of three batch layouts: ``"mixed"`` samples of any tasks (each picks
    its own copy of a task-specific layer); ``"single"`` samples all of one task, as in the
    per-task slices of a vmapped training batch (the copy is picked once for the batch); and
    ``"grouped"`` a ``[K, B, in]`` batch whose slice k belongs to task k (each slice is
    multiplied by its task's copy in one batched product).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        members: int = 1,
        num_tasks: int = 1,
        task_layers: Iterable[int] = (),
        init: str = "torch",
        head_bound: float | None = 1e-3,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}; valid: {', '.join(INITS)}")
        dims = [in_dim, *hidden, out_dim]
        self.members = members
        self.task_layers = sorted(set(task_layers))
        if any(not 0 <= layer < len(dims) - 1 for layer in self.task_layers):
            raise ValueError(
                f"task-specific layers {self.task_layers} do not exist: the network has layers "
                f"0..{len(dims) - 2}"
            )
        last = len(dims) - 2

        def bounds(index: int, fan_in: int) -> tuple[float | None, float | None]:
            if index == last and head_bound is not None:
                return head_bounds(init, head_bound)
            return hidden_bounds(init, fan_in)

        self.layers = nn.ModuleList(
            EnsembleLinear(
                members,
                num_tasks if i in self.task_layers else 1,
                fan_in,
                fan_out,
                *bounds(i, fan_in),
            )
            for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims))
        )

    def layer_parameters(self) -> list[list[str]]:
        """The parameter names of each layer, in order."""
        return [[f"layers.{i}.weight", f"layers.{i}.bias"] for i in range(len(self.layers))]

    def task_specific_parameters(self) -> list[str]:
        return [name for i in self.task_layers for name in self.layer_parameters()[i]]

    def shared_layers(self) -> dict[str, EnsembleLinear]:
        """The layers every task shares, named ``layer<i>`` (0 is the first)."""
        return {f"layer{i}": layer for i, layer in enumerate(self.layers) if layer.shared}

    def forward_rows(self, h: Tensor) -> Tensor:
        """``[members, N, in]`` (each member its own rows) → ``[members, N, out]``; for networks
        without task-specific layers."""
        for index, layer in enumerate(self.layers):
            h = layer(h, None, "mixed", 1)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def forward(self, x: Tensor, task_onehot: Tensor, layout: str = "mixed") -> Tensor:
        """``x`` of shape ``[..., in]`` → ``[members, ..., out]``."""
        lead = x.shape[:-1]
        tasks = lead[0] if layout == "grouped" else 1
        h = x.reshape(1, -1, x.shape[-1]).expand(self.members, -1, -1)
        for index, layer in enumerate(self.layers):
            h = layer(h, task_onehot, layout, tasks)
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h.view(self.members, *lead, h.shape[-1])


def _body(
    network,
    options,
    full_dim,
    state_dim,
    out_dim,
    hidden,
    *,
    members,
    num_tasks,
    task_layers,
    init,
    head_bound,
    role,
) -> nn.Module:
    """The network of an actor or a critic (``role``): the plain (multi-head) MLP on the whole
    input, or one of :mod:`mtrl.agents.architectures` on the state and the task id apart (told
    its role if its constructor takes ``role``, as BroNet's does)."""
    if network in ("mlp", "multi-head"):
        heads = [len(hidden)] if network == "multi-head" else []
        body = EnsembleMLP(
            full_dim,
            hidden,
            out_dim,
            members=members,
            num_tasks=num_tasks,
            task_layers=[*task_layers, *heads],
            init=init,
            head_bound=head_bound,
        )
        body.modular = False
        return body
    from mtrl.agents import architectures  # they are built from this module's layers

    if list(task_layers):
        raise ValueError(f"task-specific layers (Recon's) need network=mlp, not {network!r}")
    options = dict(options or {})
    kind = network_class(network) if isinstance(network, str) else network
    if takes_role(kind):
        options["role"] = role
    body = architectures.build(
        network,
        state_dim,
        out_dim,
        members=members,
        num_tasks=num_tasks,
        hidden=hidden,
        init=init,
        head_bound=head_bound,
        **options,
    )
    body.modular = True
    return body


def read_critic_embedding(actor: MultiTaskNetwork, critic: MultiTaskNetwork) -> None:
    """Point an actor whose network reads the online critic's task embedding (one with a
    ``read_embedding(critic_network)`` method, as BroNet's) at ``critic``'s."""
    read_embedding = getattr(actor.net, "read_embedding", None)
    if read_embedding is not None:
        read_embedding(critic.net)


class MultiTaskNetwork(nn.Module):
    """A network whose parameters are either shared by every task or one task's own.

    A submodule with ``shared = False`` holds task-specific parameters (one copy per task, each
    reached by its own task only); every other parameter is shared. Shared layers that can form
    per-task gradients from a grouped batch (``per_task_gradients``, ``task_gram``,
    ``combined_gradients``) are listed by :meth:`shared_layers`, which names them for the
    per-layer conflict statistics.
    """

    def shared_layers(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def task_specific_parameters(self) -> dict[str, nn.Parameter]:
        """Parameter name (as in ``named_parameters``) → parameter, for the tasks' own."""
        own = {
            id(p)
            for module in self.modules()
            if getattr(module, "shared", True) is False
            for p in module.parameters(recurse=False)
        }
        return {name: p for name, p in self.named_parameters() if id(p) in own}

    def shared_parameters(self) -> dict[str, nn.Parameter]:
        own = self.task_specific_parameters()
        return {name: p for name, p in self.named_parameters() if name not in own}


class Actor(MultiTaskNetwork):
    """Tanh-squashed Gaussian policy with a bounded log standard deviation.

    ``log_std_bounding="tanh"`` maps the network's output onto the bounds through a tanh (the
    facebookresearch/mtrl code), which puts σ near e^(−9) ≈ 1e-4 at initialisation for the
    default [−20, 2]; ``"clamp"`` clips it to them (SB3, and the JAX Meta-World+ code), which
    starts near σ = 1.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        *,
        num_tasks: int,
        task_layers: Iterable[int] = (),
        log_std_bounds: tuple[float, float] = (-20.0, 2.0),
        log_std_bounding: str = "tanh",
        init: str = "torch",
        network: str = "mlp",
        network_options: dict | None = None,
    ) -> None:
        super().__init__()
        if log_std_bounding not in LOG_STD_BOUNDINGS:
            valid = ", ".join(LOG_STD_BOUNDINGS)
            raise ValueError(f"log_std_bounding={log_std_bounding!r}; valid: {valid}")
        self.num_tasks = num_tasks
        self.log_std_min, self.log_std_max = log_std_bounds
        self.log_std_bounding = log_std_bounding
        self.net = _body(
            network,
            network_options,
            obs_dim,
            obs_dim - num_tasks,
            2 * action_dim,
            hidden,
            members=1,
            num_tasks=num_tasks,
            task_layers=task_layers,
            init=init,
            head_bound=1e-3,
            role="actor",
        )

    def distribution(self, obs: Tensor, layout: str = "mixed") -> tuple[Tensor, Tensor]:
        """Mean and log standard deviation of the Gaussian before the tanh."""
        onehot = obs[..., -self.num_tasks :]
        state = obs[..., : -self.num_tasks] if self.net.modular else obs
        out = self.net(state, onehot, layout)[0]
        mean, log_std = out.chunk(2, dim=-1)
        if self.log_std_bounding == "clamp":
            return mean, log_std.clamp(self.log_std_min, self.log_std_max)
        span = self.log_std_max - self.log_std_min
        return mean, self.log_std_min + 0.5 * span * (torch.tanh(log_std) + 1)

    def forward(self, obs: Tensor, noise: Tensor, layout: str = "mixed") -> tuple[Tensor, Tensor]:
        """A reparameterised action for standard-normal ``noise``, and its log-probability."""
        mean, log_std = self.distribution(obs, layout)
        pre_tanh = mean + log_std.exp() * noise
        action = torch.tanh(pre_tanh)
        gaussian = (-0.5 * noise.square() - log_std - HALF_LOG_TWO_PI).sum(dim=-1)
        # log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), stable for large |u|
        squash = (2 * (LOG_TWO - pre_tanh - nn.functional.softplus(-2 * pre_tanh))).sum(dim=-1)
        return action, gaussian - squash

    def deterministic(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.distribution(obs)[0])

    def shared_layers(self) -> dict[str, nn.Module]:
        return self.net.shared_layers()


class Critic(MultiTaskNetwork):
    """``n_critics`` Q-functions evaluated as one ensemble: ``Q(s, a)`` of shape ``[n, ...]``, or
    with ``outputs`` > 1 (a categorical critic's atoms) their logits ``[n, ..., outputs]``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        *,
        num_tasks: int,
        task_layers: Iterable[int] = (),
        n_critics: int = 2,
        init: str = "torch",
        network: str = "mlp",
        network_options: dict | None = None,
        outputs: int = 1,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.outputs = outputs
        inputs = obs_dim + action_dim
        self.net = _body(
            network,
            network_options,
            inputs,
            inputs - num_tasks,
            outputs,
            hidden,
            members=n_critics,
            num_tasks=num_tasks,
            task_layers=task_layers,
            init=init,
            head_bound=3e-3,
            role="critic",
        )

    def forward(self, obs: Tensor, action: Tensor, layout: str = "mixed") -> Tensor:
        onehot = obs[..., -self.num_tasks :]
        if self.net.modular:  # the state and the action, the task id apart
            inputs = torch.cat([obs[..., : -self.num_tasks], action], dim=-1)
        else:  # the observation (the task id last) and the action, as multi-task SAC has it
            inputs = torch.cat([obs, action], dim=-1)
        out = self.net(inputs, onehot, layout)
        return out[..., 0] if self.outputs == 1 else out

    def shared_layers(self) -> dict[str, nn.Module]:
        return self.net.shared_layers()
