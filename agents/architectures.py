"""The multi-task architectures of the field, each built from shared affine layers that form
per-task gradients (:class:`~mtrl.agents.networks.EnsembleLinear`), task-specific tables and
parameter-free operations, so that any method can combine their tasks' gradients.

Every network takes the state without the task id (``state``, ``[..., S]``) and the task's
one-hot (``[..., K]``), in any of the batch layouts of :class:`~mtrl.agents.networks.EnsembleMLP`,
and returns ``[members, ..., out]`` (``members``: the critic ensemble's size, or 1). Settings
follow the JAX Meta-World+ framework (rainx0r/metaworld-algorithms, ``metaworld_algorithms/nn``)
and the papers; each ``configs/network/*.yaml`` cites them.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtrl.agents.networks import (
    EnsembleLinear,
    EnsembleMLP,
    head_bounds,
    hidden_bounds,
    linear_grams,
    linear_grams_by_rows,
)


class TaskTable(nn.Module):
    """One learned vector per task (per ensemble member), looked up by the one-hot task id: a
    linear map of the one-hot without bias, i.e. a task embedding. Task-specific: each task's
    row is reached by that task alone."""

    shared = False

    def __init__(self, members: int, num_tasks: int, width: int, bound: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, num_tasks, width).uniform_(-bound, bound))

    def forward(self, task_onehot: Tensor) -> Tensor:
        """``[members, N, width]`` for the one-hots of N rows."""
        onehot = task_onehot.reshape(-1, task_onehot.shape[-1])
        return torch.einsum("nk,mkw->mnw", onehot, self.weight)


def _rows(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _members(h: Tensor, members: int) -> Tensor:
    """``[N, d]`` rows given to every member, ``[members, N, d]``."""
    return h.unsqueeze(0).expand(members, -1, -1) if h.dim() == 2 else h


def _tasks(layout: str, lead: torch.Size) -> int:
    return lead[0] if layout == "grouped" else 1


def gram_schmidt(vectors: Tensor, eps: float = 1e-8) -> Tensor:
    """Orthonormalise ``vectors`` ``[..., E, d]`` along E, in order (MOORE's experts)."""
    basis: list[Tensor] = []
    for vector in vectors.unbind(-2):
        for unit in basis:
            vector = vector - (vector * unit).sum(-1, keepdim=True) * unit
        basis.append(vector / (vector.norm(dim=-1, keepdim=True) + eps))
    return torch.stack(basis, dim=-2)


class MOORE(nn.Module):
    """Mixture of orthogonal experts (Hendawy et al., ICLR 2024): E expert MLPs on the state,
    their outputs orthonormalised per sample (Gram–Schmidt), mixed by task-specific weights,
    a tanh, then one output head per task."""

    def __init__(
        self, state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound, experts: int = 4
    ) -> None:
        super().__init__()
        self.members, self.experts = members, experts
        self.expert_net = EnsembleMLP(
            state_dim, hidden[:-1], hidden[-1], members=members * experts, init=init
        )
        self.task_weights = TaskTable(members, num_tasks, experts, 1 / math.sqrt(num_tasks))
        self.head = EnsembleLinear(
            members, num_tasks, hidden[-1], out_dim, *head_bounds(init, head_bound)
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead = state.shape[:-1]
        outputs = self.expert_net(_rows(state), task_onehot, "mixed")  # [M·E, N, width]
        outputs = outputs.view(self.members, self.experts, -1, outputs.shape[-1])
        basis = gram_schmidt(outputs.transpose(1, 2))  # [M, N, E, width]
        mixed = torch.tanh(torch.einsum("mne,mnew->mnw", self.task_weights(task_onehot), basis))
        out = self.head(mixed, task_onehot, layout, _tasks(layout, lead))
        return out.view(self.members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        return prefixed(expert=self.expert_net)


class SoftModules(nn.Module):
    """Soft modularization (Yang et al., NeurIPS 2020): ``layers`` layers of ``modules`` modules
    on the state, whose outputs a routing network mixes per sample (its widths are its own, not
    ``agent.net_arch``). The routing network sees the
    state embedding times the task embedding; each routing layer gives softmax weights of every
    module of the layer before for every module of its layer, from the routing embedding and the
    earlier routing weights; a last routing layer mixes the final modules for a single head."""

    def __init__(
        self,
        state_dim,
        out_dim,
        *,
        members,
        num_tasks,
        hidden,
        init,
        head_bound,
        modules: int = 2,
        layers: int = 2,
        module_width: int = 256,
        embedding_width: int = 400,
        width: int = 256,
    ) -> None:
        super().__init__()
        self.members, self.modules_ = members, modules
        self.state_embedding = EnsembleMLP(
            state_dim, [width], embedding_width, members=members, init=init
        )
        self.task_embedding = TaskTable(members, num_tasks, embedding_width, 1.0)
        self.routing_trunk = EnsembleMLP(
            embedding_width, [width], width, members=members, init=init
        )
        squares = modules * modules
        self.routers = nn.ModuleList(
            EnsembleLinear(members, 1, width + layer * squares, squares, 1e-3, 0.0)
            for layer in range(layers - 1)
        )
        self.output_router = EnsembleLinear(
            members, 1, width + (layers - 1) * squares, modules, 1e-3, 0.0
        )
        module_sizes = [state_dim] + [module_width] * layers
        self.module_layers = nn.ModuleList(
            EnsembleLinear(members * modules, 1, fan_in, module_width, *hidden_bounds(init, fan_in))
            for fan_in in module_sizes[:-1]
        )
        self.head = EnsembleLinear(
            members, 1, module_width, out_dim, *head_bounds(init, head_bound)
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members, modules = state.shape[:-1], self.members, self.modules_
        rows = _rows(state)
        f = self.state_embedding(rows, task_onehot, "mixed")  # [M, N, embedding]
        routing = self.routing_trunk.forward_rows(torch.relu(f * self.task_embedding(task_onehot)))
        routing = torch.relu(routing)
        seen = [routing]
        h = self.module_layers[0](_members(rows, members * modules), None, "mixed", 1)
        h = torch.relu(h).view(members, modules, rows.shape[0], -1)
        for router, layer in zip(self.routers, self.module_layers[1:], strict=True):
            logits = router(torch.cat(seen, dim=-1), None, "mixed", 1)
            weights = torch.softmax(logits.view(members, -1, modules, modules), dim=-1)
            seen.append(weights.flatten(2))
            mixed = torch.einsum("mnji,mind->mjnd", weights, h)  # module j's input from all i
            h = layer(mixed.flatten(0, 1), None, "mixed", 1)
            h = torch.relu(h).view(members, modules, rows.shape[0], -1)
        last = torch.softmax(self.output_router(torch.cat(seen, dim=-1), None, "mixed", 1), -1)
        out = self.head(torch.einsum("mnj,mjnd->mnd", last, h), None, "mixed", 1)
        return out.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        layers = prefixed(state=self.state_embedding, routing=self.routing_trunk)
        layers |= {f"router{i}": r for i, r in enumerate(self.routers)}
        layers["router_out"] = self.output_router
        layers |= {f"modules{i}": m for i, m in enumerate(self.module_layers)}
        layers["head"] = self.head
        return layers


class CARE(nn.Module):
    """Contextual attention-based representations (Sodhani et al., ICML 2021): a mixture of E
    state encoders, weighted by attention on a task embedding, then the main MLP on the mixture
    and the task embedding, single head. CARE's paper embeds task descriptions with a pretrained
    language model, which cannot be downloaded here: the task embedding is learned, as the JAX
    Meta-World+ code does."""

    def __init__(
        self,
        state_dim,
        out_dim,
        *,
        members,
        num_tasks,
        hidden,
        init,
        head_bound,
        experts: int = 6,
        encoder_width: int = 50,
        encoder_depth: int = 2,
        embedding_width: int = 50,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.members, self.experts, self.temperature = members, experts, temperature
        encoder_hidden = [encoder_width] * encoder_depth
        self.task_table = TaskTable(members, num_tasks, embedding_width, 1.0)
        self.task_encoder = EnsembleMLP(
            embedding_width, encoder_hidden, embedding_width, members=members, init=init
        )
        self.attention = EnsembleMLP(
            embedding_width, encoder_hidden, experts, members=members, init=init
        )
        self.encoders = EnsembleMLP(
            state_dim, encoder_hidden, encoder_width, members=members * experts, init=init
        )
        self.main = EnsembleMLP(
            encoder_width + embedding_width,
            hidden,
            out_dim,
            members=members,
            init=init,
            head_bound=head_bound,
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members = state.shape[:-1], self.members
        task = self.task_encoder.forward_rows(torch.relu(self.task_table(task_onehot)))
        attention = torch.softmax(self.attention.forward_rows(task) / self.temperature, dim=-1)
        encoded = self.encoders(_rows(state), task_onehot, "mixed")  # [M·E, N, width]
        encoded = encoded.view(members, self.experts, -1, encoded.shape[-1])
        mixture = torch.einsum("mne,mend->mnd", attention, encoded)
        out = self.main.forward_rows(torch.cat([mixture, task], dim=-1))
        return out.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        return prefixed(
            task=self.task_encoder, attention=self.attention, encoders=self.encoders, main=self.main
        )


class FiLM(nn.Module):
    """Feature-wise modulation by the task (Perez et al., AAAI 2018, as in the JAX Meta-World+
    code): a learned task embedding gives one scale and one shift per layer of a small state
    encoder; the encoding and the task embedding go into the main MLP, single head."""

    def __init__(
        self,
        state_dim,
        out_dim,
        *,
        members,
        num_tasks,
        hidden,
        init,
        head_bound,
        encoder_width: int = 50,
        encoder_depth: int = 2,
        embedding_width: int = 50,
    ) -> None:
        super().__init__()
        self.members = members
        encoder_hidden = [encoder_width] * encoder_depth
        self.task_table = TaskTable(members, num_tasks, embedding_width, 1.0)
        self.film = EnsembleMLP(
            embedding_width, encoder_hidden, 2 * (encoder_depth + 1), members=members, init=init
        )
        sizes = [state_dim] + [encoder_width] * (encoder_depth + 1)
        self.encoder = nn.ModuleList(
            EnsembleLinear(members, 1, fan_in, fan_out, *hidden_bounds(init, fan_in))
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.main = EnsembleMLP(
            encoder_width + embedding_width,
            hidden,
            out_dim,
            members=members,
            init=init,
            head_bound=head_bound,
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members = state.shape[:-1], self.members
        task = torch.relu(self.task_table(task_onehot))
        scales, shifts = self.film.forward_rows(task).chunk(2, dim=-1)  # [M, N, layers] each
        h = _members(_rows(state), members)
        for index, layer in enumerate(self.encoder):
            h = layer(h, None, "mixed", 1)
            if index < len(self.encoder) - 1:
                h = torch.relu(h)
            h = scales[..., index : index + 1] * h + shifts[..., index : index + 1]
        out = self.main.forward_rows(torch.cat([h, task], dim=-1))
        return out.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        encoder = {f"encoder{i}": layer for i, layer in enumerate(self.encoder)}
        return prefixed(film=self.film) | encoder | prefixed(main=self.main)


class PaCoLinear(nn.Module):
    """``S`` parallel affine maps mixed per task (parameter compositions, Sun et al., NeurIPS
    2022): task τ's map is ``Σ_i c_τi (W_i, b_i)``. The sets ``(W_i, b_i)`` are shared; the
    compositions ``c`` are one vector per task, given to :meth:`forward`.

    Task τ's gradient of ``W_i`` is ``c_τi h_τᵀ δ_τ``, so the layer's Gram matrix is that of
    the plain map's per-task gradients times ``c cᵀ`` (per member), and ``Jᵀw`` weights each row
    by ``w_τ c_τi``.
    """

    def __init__(self, members, sets, fan_in, fan_out, weight_bound=None, bias_bound=None) -> None:
        super().__init__()
        default = 1 / math.sqrt(fan_in)
        weight_bound = default if weight_bound is None else weight_bound
        bias_bound = default if bias_bound is None else bias_bound
        self.weight = nn.Parameter(torch.empty(members, sets, fan_in, fan_out))
        self.bias = nn.Parameter(torch.empty(members, sets, 1, fan_out))
        nn.init.uniform_(self.weight, -weight_bound, weight_bound)
        nn.init.uniform_(self.bias, -bias_bound, bias_bound)
        self._mix: Tensor | None = None  # each task's composition, from the last grouped pass

    def forward(self, h: Tensor, mix: Tensor, layout: str, tasks: int) -> Tensor:
        """``h`` ``[members, N, in]``, ``mix`` each row's composition ``[members, N, S]``."""
        if layout == "grouped":
            per_task = mix.view(mix.shape[0], tasks, -1, mix.shape[-1])[:, :, 0]  # [M, K, S]
            self._mix = per_task.detach()
            weight = torch.einsum("mks,msio->mkio", per_task, self.weight)
            bias = torch.einsum("mks,msio->mkio", per_task, self.bias)
            grouped = h.view(h.shape[0], tasks, -1, h.shape[-1])
            return (torch.einsum("mkbi,mkio->mkbo", grouped, weight) + bias).flatten(1, 2)
        outputs = torch.einsum("mni,msio->msno", h, self.weight) + self.bias
        return torch.einsum("mns,msno->mno", mix, outputs)

    def _base_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> tuple:
        members, rows, fan_in = inputs.shape
        h = inputs.reshape(members * tasks, rows // tasks, fan_in)
        delta = output_grads.reshape(members * tasks, rows // tasks, -1)
        weight = torch.bmm(h.transpose(1, 2), delta).view(members, tasks, fan_in, -1)
        return weight, delta.sum(dim=1).view(members, tasks, 1, -1)

    def per_task_gradients(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> dict:
        weight, bias = self._base_gradients(inputs, output_grads, tasks)
        mix = self._mix  # [M, K, S]
        return {
            "weight": torch.einsum("mks,mkio->kmsio", mix, weight),
            "bias": torch.einsum("mks,mkio->kmsio", mix, bias),
        }

    def _compositions(self) -> Tensor:
        return torch.bmm(self._mix, self._mix.transpose(1, 2))  # [M, K, K]

    def task_gram(
        self, inputs: Tensor, output_grads: Tensor, tasks: int, tile: tuple[int, int]
    ) -> Tensor:
        grams = linear_grams(inputs, output_grads, tasks, tile)
        return (self._compositions() * grams).sum(dim=0)

    def task_gram_by_rows(self, inputs: Tensor, output_grads: Tensor, tasks: int) -> Tensor:
        grams = linear_grams_by_rows(inputs, output_grads, tasks)
        return (self._compositions() * grams).sum(dim=0)

    def combined_gradients(self, inputs: Tensor, output_grads: Tensor, row_weights: Tensor):
        """From the plain map's per-task gradients ``[M, K, in, out]`` (the ordinary backward
        pass through the composed maps forms them too), each task's weighted by ``w_τ c_τ``."""
        tasks = self._mix.shape[1]
        weight, bias = self._base_gradients(inputs, output_grads, tasks)
        scaled = self._mix * row_weights[:: inputs.shape[1] // tasks][None, :, None]
        return {
            "weight": torch.einsum("mks,mkio->msio", scaled, weight),
            "bias": torch.einsum("mks,mkio->msio", scaled, bias),
        }


class PaCo(nn.Module):
    """Parameter compositions (Sun et al., NeurIPS 2022): every layer, the output layer too, is
    a :class:`PaCoLinear` of ``sets`` parameter sets, mixed by one composition vector per task
    (a linear map of the one-hot, no softmax). The paper's loss maskout and weight reset are
    left out."""

    def __init__(
        self, state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound, sets: int = 5
    ) -> None:
        super().__init__()
        self.members = members
        self.compositions = TaskTable(members, num_tasks, sets, 1 / math.sqrt(num_tasks))
        sizes = [state_dim, *hidden, out_dim]
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            PaCoLinear(
                members,
                sets,
                fan_in,
                fan_out,
                *(head_bounds(init, head_bound) if index == last else hidden_bounds(init, fan_in)),
            )
            for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes))
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members = state.shape[:-1], self.members
        mix = self.compositions(task_onehot)  # [M, N, S]
        h = _members(_rows(state), members)
        for index, layer in enumerate(self.layers):
            h = layer(h, mix, layout, _tasks(layout, lead))
            if index < len(self.layers) - 1:
                h = torch.relu(h)
        return h.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        return {f"layer{i}": layer for i, layer in enumerate(self.layers)}


def prefixed(**parts: nn.Module) -> dict[str, nn.Module]:
    """The shared layers of each part, each label prefixed with the part's name."""
    return {
        f"{name}_{label}": layer
        for name, part in parts.items()
        for label, layer in part.shared_layers().items()
    }


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "moore": MOORE,
    "soft-modules": SoftModules,
    "care": CARE,
    "paco": PaCo,
    "film": FiLM,
}


def check_options(kind: str, options: dict) -> None:
    """Refuse an unknown network, an unknown option, or a count or size that is not a positive
    integer (a temperature not a positive number), naming the option; nothing is built."""
    if kind not in ARCHITECTURES:
        valid = ", ".join(["mlp", "multi-head", *ARCHITECTURES])
        raise ValueError(f"unknown network {kind!r}; valid: {valid}")
    parameters = inspect.signature(ARCHITECTURES[kind]).parameters
    known = [p for p in parameters.values() if p.default is not inspect.Parameter.empty]
    unknown = sorted(set(options) - {p.name for p in known})
    if unknown:
        raise ValueError(f"{kind}: no option {unknown}; valid: {', '.join(p.name for p in known)}")
    for name, value in options.items():
        positive = not isinstance(value, bool) and isinstance(value, int | float) and value > 0
        integer = isinstance(parameters[name].default, int)
        if not positive or not math.isfinite(value) or (integer and not isinstance(value, int)):
            kind_of = "an integer >= 1" if integer else "a positive number"
            raise ValueError(f"{kind}: {name} must be {kind_of}, got {value!r}")


def build(
    kind: str,
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
    """The network ``kind`` (one of :data:`ARCHITECTURES`) with its own ``options``."""
    check_options(kind, options)
    return ARCHITECTURES[kind](
        state_dim,
        out_dim,
        members=members,
        num_tasks=num_tasks,
        hidden=list(hidden),
        init=init,
        head_bound=head_bound,
        **options,
    )
