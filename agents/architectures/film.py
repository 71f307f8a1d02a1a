"""FiLM, feature-wise modulation (Perez et al., AAAI 2018), as the JAX Meta-World+ code uses it
for multi-task RL (metaworld_algorithms/nn/film.py)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import embedding, per_member, prefixed, rows
from mtrl.agents.networks import EnsembleLinear, EnsembleMLP, hidden_bounds


class FiLM(nn.Module):
    """A learned task embedding gives one scale γ and one shift β per layer of a state encoder
    (``encoder_depth`` ReLU layers ``encoder_width`` wide, then a layer to ``embedding_width``
    without ReLU), each layer's output becoming ``γ h + β``; the encoding and ``relu`` of the
    task embedding go into the main MLP (``agent.net_arch``), single head.

    γ and β come from an MLP on ``relu`` of the embedding, interleaved (γ₀, β₀, γ₁, β₁, …),
    ending in a layer drawn as a hidden one (He, zero bias); the embedding is
    N(0, 1/embedding_width), as Flax's ``nn.Embed``. Each γ is one plus the MLP's output, as in
    the FiLM authors' code (``gamma_baseline=1``), where the JAX Meta-World+ code takes the output
    itself: with its small embedding that gives γ ≈ 0.1 per layer at the start, and a network
    that barely sees the state (docs/benchmarks.md). FiLM has no published Meta-World figure to
    reproduce, so the paper's authors' choice stands there.
    """

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
        self.task_table = embedding(members, num_tasks, embedding_width, init)
        self.film = EnsembleMLP(
            embedding_width,
            [encoder_width] * encoder_depth,
            2 * (encoder_depth + 1),
            members=members,
            init=init,
            head_bound=None,
        )
        sizes = [state_dim] + [encoder_width] * encoder_depth + [embedding_width]
        self.encoder = nn.ModuleList(
            EnsembleLinear(members, 1, fan_in, fan_out, *hidden_bounds(init, fan_in))
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.main = EnsembleMLP(
            2 * embedding_width, hidden, out_dim, members=members, init=init, head_bound=head_bound
        )

    def modulation(self, task_onehot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``relu`` of the task embedding ``[M, N, embedding]``, and the scales and shifts
        ``[M, N, layers]`` for rows of one-hots."""
        task = torch.relu(self.task_table(task_onehot))
        film = self.film.forward_rows(task)
        film = film.view(*film.shape[:-1], len(self.encoder), 2)
        return task, 1 + film[..., 0], film[..., 1]

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead = state.shape[:-1]
        task, scales, shifts = self.modulation(task_onehot)
        h = per_member(rows(state), self.members)
        for index, layer in enumerate(self.encoder):
            h = layer(h, None, "mixed", 1)
            if index < len(self.encoder) - 1:
                h = torch.relu(h)
            h = scales[..., index : index + 1] * h + shifts[..., index : index + 1]
        out = self.main.forward_rows(torch.cat([h, task], dim=-1))
        return out.view(self.members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        encoder = {f"encoder{i}": layer for i, layer in enumerate(self.encoder)}
        return prefixed(film=self.film) | encoder | prefixed(main=self.main)
