"""CARE, contextual attention-based representations (Sodhani et al., ICML 2021), as the JAX
Meta-World+ code builds it (metaworld_algorithms/nn/care.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import embedding, prefixed, rows
from mtrl.agents.networks import EnsembleMLP


class CARE(nn.Module):
    """A mixture of E state encoders, weighted by attention on a task encoding, then the main
    MLP (``agent.net_arch``) on the mixture and the task encoding, single head.

    The task encoding is an MLP on ``relu`` of a learned task embedding; the attention is an MLP
    on the encoding, softmax over encoders at ``temperature``; every encoder and the encoding
    output ``embedding_width`` values. CARE's paper embeds task descriptions with a pretrained
    language model, which cannot be downloaded here: the task embedding is learned, as in the
    reference code. Sub-networks end in a layer drawn as a hidden one (He, zero bias); the
    embedding is N(0, 1/embedding_width), as Flax's ``nn.Embed``.
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
        experts: int = 6,
        encoder_width: int = 50,
        encoder_depth: int = 2,
        embedding_width: int = 50,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.members, self.experts, self.temperature = members, experts, temperature
        encoder_hidden = [encoder_width] * encoder_depth

        def subnetwork(fan_in: int, fan_out: int, copies: int = 1) -> EnsembleMLP:
            return EnsembleMLP(
                fan_in,
                encoder_hidden,
                fan_out,
                members=members * copies,
                init=init,
                head_bound=None,
            )

        self.task_table = embedding(members, num_tasks, embedding_width, init)
        self.task_encoder = subnetwork(embedding_width, embedding_width)
        self.attention = subnetwork(embedding_width, experts)
        self.encoders = subnetwork(state_dim, embedding_width, experts)
        self.main = EnsembleMLP(
            2 * embedding_width, hidden, out_dim, members=members, init=init, head_bound=head_bound
        )

    def attention_weights(self, task_onehot: Tensor) -> tuple[Tensor, Tensor]:
        """The task encoding ``[M, N, embedding]`` and the attention over encoders ``[M, N, E]``
        for rows of one-hots."""
        task = self.task_encoder.forward_rows(torch.relu(self.task_table(task_onehot)))
        return task, torch.softmax(self.attention.forward_rows(task) / self.temperature, dim=-1)

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members = state.shape[:-1], self.members
        task, attention = self.attention_weights(task_onehot)
        encoded = self.encoders(rows(state), task_onehot, "mixed")  # [M·E, N, embedding]
        encoded = encoded.view(members, self.experts, -1, encoded.shape[-1])
        mixture = torch.einsum("mne,mend->mnd", attention, encoded)
        out = self.main.forward_rows(torch.cat([mixture, task], dim=-1))
        return out.view(members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        return prefixed(
            task=self.task_encoder, attention=self.attention, encoders=self.encoders, main=self.main
        )
