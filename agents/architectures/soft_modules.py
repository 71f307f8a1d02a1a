"""Soft modularization (Yang et al., NeurIPS 2020), as the JAX Meta-World+ code builds it
(metaworld_algorithms/nn/soft_modules.py, which follows the authors' ``ModularGatedCascadeCondNet``
where the paper leaves details out)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import TaskDense, prefixed, rows
from mtrl.agents.networks import EnsembleLinear, EnsembleMLP, head_bounds, hidden_bounds


class SoftModules(nn.Module):
    """``layers`` layers of ``modules`` modules, mixed per sample by a routing network; single
    output head. Its widths are its own, not ``agent.net_arch``.

    - A state trunk f (one hidden layer of ``trunk_width``, output ``embedding_width``) and a
      dense layer z on the one-hot; the routing embedding is ``e = g(relu(z ⊙ f(s)))``, g a
      trunk of one hidden layer, ``width`` wide.
    - Routing layer l gives, for each module of layer l, softmax weights over the modules of
      layer l: ``p_l = softmax(W_d relu(e ⊙ W_u [p_0 … p_{l−1}]))`` (just ``W_d relu(e)`` for the
      first); the last routing layer gives one weight per module of the last layer.
    - The first layer's modules read ``relu(f(s))``; module j of layer l+1 reads
      ``relu(Σ_i p_l[j, i] M_i(x_i))``, the modules' outputs mixed before the ReLU; the head reads
      ``relu(Σ_i p_L[i] M_i(x_i))``.

    Every dense layer is drawn as a hidden layer (He, zero bias) but the routing outputs ``W_d``
    (U(±1e-3), zero bias) and the head (the agent's output layer).
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
        modules: int = 2,
        layers: int = 2,
        module_width: int = 256,
        embedding_width: int = 400,
        width: int = 256,
        trunk_width: int = 400,
    ) -> None:
        super().__init__()
        self.members, self.modules_ = members, modules
        self.state_trunk = EnsembleMLP(
            state_dim, [trunk_width], embedding_width, members=members, init=init, head_bound=None
        )
        self.task_embedding = TaskDense(members, num_tasks, embedding_width, init)
        self.routing_trunk = EnsembleMLP(
            embedding_width, [width], width, members=members, init=init, head_bound=None
        )
        squares = modules * modules
        self.routing_inputs = nn.ModuleList(  # W_u of routing layers 1 … L−1
            EnsembleLinear(
                members, 1, layer * squares, width, *hidden_bounds(init, layer * squares)
            )
            for layer in range(1, layers)
        )
        self.routers = nn.ModuleList(  # W_d
            EnsembleLinear(members, 1, width, squares if layer < layers - 1 else modules, 1e-3, 0.0)
            for layer in range(layers)
        )
        fan_ins = [embedding_width] + [module_width] * (layers - 1)
        self.module_layers = nn.ModuleList(
            EnsembleLinear(members * modules, 1, fan_in, module_width, *hidden_bounds(init, fan_in))
            for fan_in in fan_ins
        )
        self.head = EnsembleLinear(
            members, 1, module_width, out_dim, *head_bounds(init, head_bound)
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead, members, modules = state.shape[:-1], self.members, self.modules_
        f = self.state_trunk(rows(state), task_onehot, "mixed")  # [M, N, embedding]
        count = f.shape[1]
        routes = self._routes(f, task_onehot)
        # every module of the first layer reads the activated state embedding
        h = torch.relu(f).unsqueeze(1).expand(-1, modules, -1, -1).flatten(0, 1)
        for layer, weights in zip(self.module_layers[:-1], routes[:-1], strict=True):
            outputs = layer(h, None, "mixed", 1).view(members, modules, count, -1)
            mixed = torch.einsum("mnji,mind->mjnd", weights, outputs)  # module j from all i
            h = torch.relu(mixed).flatten(0, 1)
        outputs = self.module_layers[-1](h, None, "mixed", 1).view(members, modules, count, -1)
        h = torch.relu(torch.einsum("mni,mind->mnd", routes[-1], outputs))
        out = self.head(h, None, "mixed", 1)
        return out.view(members, *lead, -1)

    def _routes(self, f: Tensor, task_onehot: Tensor) -> list[Tensor]:
        """Each routing layer's weights from the state embedding f (see :meth:`routing_weights`);
        they depend on the modules' outputs nowhere, so all are formed first."""
        members, modules = self.members, self.modules_
        routing = self.routing_trunk.forward_rows(torch.relu(self.task_embedding(task_onehot) * f))
        routes: list[Tensor] = []
        for index, router in enumerate(self.routers):
            gate = routing
            if index > 0:
                earlier = torch.cat([weights.flatten(2) for weights in routes], dim=-1)
                gate = routing * self.routing_inputs[index - 1](earlier, None, "mixed", 1)
            logits = router(torch.relu(gate), None, "mixed", 1)
            if index < len(self.routers) - 1:
                logits = logits.view(members, -1, modules, modules)
            routes.append(torch.softmax(logits, dim=-1))
        return routes

    def routing_weights(self, state: Tensor, task_onehot: Tensor) -> list[Tensor]:
        """Each routing layer's weights for rows of states and one-hots: ``[M, N, modules,
        modules]`` (row j: module j's weights over the modules of its layer), and ``[M, N,
        modules]`` for the last, which mixes the last layer's modules for the head."""
        return self._routes(self.state_trunk(rows(state), task_onehot, "mixed"), task_onehot)

    def shared_layers(self) -> dict[str, nn.Module]:
        layers = prefixed(
            state=self.state_trunk, task=self.task_embedding, routing=self.routing_trunk
        )
        layers |= {f"router_input{i + 1}": r for i, r in enumerate(self.routing_inputs)}
        layers |= {f"router{i}": r for i, r in enumerate(self.routers)}
        layers |= {f"modules{i}": m for i, m in enumerate(self.module_layers)}
        layers["head"] = self.head
        return layers
