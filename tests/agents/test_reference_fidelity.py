"""Each architecture is the network its reference code builds (rainx0r/metaworld-algorithms,
``metaworld_algorithms/nn/``): the property its paper defines, a forward pass written here from
the reference's equations with plain torch operations on the module's weights, the same outputs
in every batch layout, and at initialisation a response to the state on the order of the plain
multi-head MLP's."""

from __future__ import annotations

import pytest
import torch

from mtrl.agents.architectures import ARCHITECTURES, build
from mtrl.agents.mtsac import MTSAC
from mtrl.agents.networks import Actor, Critic, EnsembleMLP
from mtrl.checkpoint import CheckpointError
from scripts.init_spread import table as spread_table
from tests.agents.point_tasks import point_tasks

TASKS, BATCH, STATE, ACTIONS, OUT, MEMBERS = 3, 4, 5, 2, 3, 2
HIDDEN = [8, 9, 10]
SMALL = {  # each architecture's options, scaled down: none of these properties needs width
    "moore": {"experts": 3},
    "soft-modules": {
        "modules": 3,
        "layers": 3,
        "module_width": 6,
        "embedding_width": 7,
        "width": 5,
        "trunk_width": 8,
    },
    "care": {"experts": 3, "encoder_width": 6, "embedding_width": 7, "temperature": 0.7},
    "paco": {"sets": 3},
    "film": {"encoder_width": 6, "encoder_depth": 2, "embedding_width": 7},
}
# BroNet follows BRC's code, not the Meta-World+ code, and is not measured against multi-head:
# tests/agents/test_bronet.py checks it against its own reference.
FIELD = [name for name in ARCHITECTURES if name != "bronet"]
NETWORKS = [*FIELD, "mlp", "multi-head"]


def module(network: str, randomise: bool = True) -> torch.nn.Module:
    """The network in float64 with two members (as the twin critic). With ``randomise`` every
    parameter is redrawn N(0, 0.5²), so that no zero bias or near-uniform routing of the
    initialisation hides a wrong equation."""
    torch.manual_seed(0)
    if network in ("mlp", "multi-head"):
        heads = [len(HIDDEN)] if network == "multi-head" else []
        sizes = (STATE + TASKS, HIDDEN, OUT)
        net = EnsembleMLP(*sizes, members=MEMBERS, num_tasks=TASKS, task_layers=heads, init="he")
    else:
        options = SMALL[network]
        net = build(
            network,
            STATE,
            OUT,
            members=MEMBERS,
            num_tasks=TASKS,
            hidden=HIDDEN,
            init="he",
            head_bound=1e-3,
            **options,
        )
    net = net.double()
    if randomise:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.5 * torch.randn_like(p))
    return net


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped states ``[K, B, S]`` and their one-hots ``[K, B, K]``."""
    generator = torch.Generator().manual_seed(seed)
    state = torch.randn(TASKS, BATCH, STATE, generator=generator, dtype=torch.float64)
    onehot = torch.eye(TASKS, dtype=torch.float64)[:, None].expand(-1, BATCH, -1)
    return state, onehot


def run(net: torch.nn.Module, network: str, state, onehot, layout: str) -> torch.Tensor:
    """The module on a batch; the plain MLPs read the whole observation, the task id last."""
    if network in ("mlp", "multi-head"):
        return net(torch.cat([state, onehot], -1), onehot, layout)
    return net(state, onehot, layout)


# -- the reference's equations (metaworld_algorithms/nn/*.py), on the module's weights ----------
# Weights are read from the module's state dict; a layer's kernel is stored [in, out], as Flax's.


def dense(w: dict, name: str, x: torch.Tensor, member: int) -> torch.Tensor:
    return x @ w[f"{name}.weight"][member, 0] + w[f"{name}.bias"][member, 0, 0]


def mlp(w: dict, name: str, x: torch.Tensor, member: int) -> torch.Tensor:
    """base.py's MLP: a ReLU after every Dense layer but the last."""
    prefix = f"{name}.layers." if name else "layers."
    depth = len({key[len(prefix) :].split(".")[0] for key in w if key.startswith(prefix)})
    for i in range(depth):
        x = dense(w, f"{prefix}{i}", x, member)
        if i < depth - 1:
            x = torch.relu(x)
    return x


def heads(w: dict, name: str, x: torch.Tensor, onehot: torch.Tensor, member: int):
    """One head per task on every row, then each row's own task's (multi_head.py, moore.py)."""
    every = torch.einsum("bi,kio->bko", x, w[f"{name}.weight"][member])
    every = every + w[f"{name}.bias"][member, :, 0]
    return every[torch.arange(x.shape[0]), onehot.argmax(-1)]


def reference_multi_head(w, obs, onehot, m):
    depth = len({key.split(".")[1] for key in w})
    h = obs
    for i in range(depth - 1):
        h = torch.relu(dense(w, f"layers.{i}", h, m))
    return heads(w, f"layers.{depth - 1}", h, onehot, m)


def orthogonal_1d(x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """moore.py's Gram–Schmidt, ``[batch, experts, dim]``."""
    basis = (x[:, 0, :] / (torch.linalg.norm(x[:, 0, :], dim=1, keepdim=True) + 1e-8))[:, None]
    for i in range(1, num_experts):
        v = x[:, i : i + 1, :]
        v = v - (v @ basis.transpose(1, 2)) @ basis
        basis = torch.cat([basis, v / (torch.linalg.norm(v, dim=2, keepdim=True) + 1e-8)], 1)
    return basis


def reference_moore(w, x, onehot, m, experts):
    task_embedding = onehot @ w["task_weights.weight"][m]  # Dense, no bias
    outputs = torch.stack([mlp(w, "expert_net", x, m * experts + e) for e in range(experts)], -2)
    basis = orthogonal_1d(outputs, experts)
    features = torch.tanh(torch.einsum("bnk,bn->bk", basis, task_embedding))
    return heads(w, "head", features, onehot, m)


def reference_soft_modules(w, x, onehot, m, modules, layers):
    n = modules
    obs_embedding = mlp(w, "state_trunk", x, m)  # f, not activated
    z = onehot @ w["task_embedding.table.weight"][m] + w["task_embedding.bias.bias"][m, 0]
    task_embedding = mlp(w, "routing_trunk", torch.relu(z * obs_embedding), m)

    def probs(i, prev):
        e = task_embedding
        if prev is not None:
            e = e * dense(w, f"routing_inputs.{i - 1}", prev, m)
        out = dense(w, f"routers.{i}", torch.relu(e), m)
        if i < layers - 1:
            out = out.reshape(*out.shape[:-1], n, n)
        return torch.softmax(out, dim=-1)

    def module_layer(i, ins):  # each module on its own input
        outs = [dense(w, f"module_layers.{i}", ins[:, j], m * n + j) for j in range(n)]
        return torch.stack(outs, dim=-2)

    module_ins = torch.stack([torch.relu(obs_embedding)] * n, dim=-2)
    prev, seen = None, []
    for i in range(layers - 1):
        p = probs(i, prev)
        module_outs = torch.relu(p @ module_layer(i, module_ins))  # mixed, then the ReLU
        seen.append(p.reshape(p.shape[0], n * n))
        prev = torch.cat(seen, dim=-1)
        module_ins = module_outs
    module_outs = module_layer(layers - 1, module_ins)
    p = probs(layers - 1, prev)[..., None]
    return dense(w, "head", torch.relu((module_outs * p).sum(-2)), m)


def reference_care(w, x, onehot, m, experts, temperature):
    embedding = torch.relu(w["task_table.weight"][m][onehot.argmax(-1)])  # nn.Embed
    task = mlp(w, "task_encoder", embedding, m)
    attention = torch.softmax(mlp(w, "attention", task, m) / temperature, dim=-1)
    moe = torch.stack([mlp(w, "encoders", x, m * experts + e) for e in range(experts)], -2)
    encoder_out = torch.einsum("bne,bn->be", moe, attention)
    return mlp(w, "main", torch.cat([encoder_out, task], -1), m)


def reference_film(w, x, onehot, m, depth, before_format_4=False):
    embedding = torch.relu(w["task_table.weight"][m][onehot.argmax(-1)])  # nn.Embed
    film = mlp(w, "film", embedding, m)
    if before_format_4:  # mtrl's FiLM until checkpoint format 4: all scales, then all shifts
        gammas, betas = film[:, : depth + 1, None], film[:, depth + 1 :, None]
    else:
        film = film.reshape(-1, depth + 1, 2, 1)
        # γ = 1 + output, as in the FiLM authors' code (gamma_baseline=1); the JAX code: output
        gammas, betas = 1 + film[:, :, 0], film[:, :, 1]
    for i in range(depth):
        x = torch.relu(dense(w, f"encoder.{i}", x, m)) * gammas[:, i] + betas[:, i]
    x = dense(w, f"encoder.{depth}", x, m) * gammas[:, -1] + betas[:, -1]
    return mlp(w, "main", torch.cat([x, embedding], -1), m)


def reference_paco(w, x, onehot, m):
    w_tau = onehot @ w["compositions.table.weight"][m] + w["compositions.bias.bias"][m, 0]
    depth = len({key.split(".")[1] for key in w if key.startswith("layers.")})
    for i in range(depth):
        sets = torch.einsum("bi,sio->bso", x, w[f"layers.{i}.weight"][m])
        sets = sets + w[f"layers.{i}.bias"][m, :, 0]
        x = torch.einsum("bkn,bk->bn", sets, w_tau)
        if i < depth - 1:
            x = torch.relu(x)
    return x


def reference(network: str, w: dict, x, onehot, m: int) -> torch.Tensor:
    options = SMALL.get(network, {})
    if network == "mlp":
        return mlp(w, "", x, m)
    if network == "multi-head":
        return reference_multi_head(w, x, onehot, m)
    if network == "moore":
        return reference_moore(w, x, onehot, m, options["experts"])
    if network == "soft-modules":
        return reference_soft_modules(w, x, onehot, m, options["modules"], options["layers"])
    if network == "care":
        return reference_care(w, x, onehot, m, options["experts"], options["temperature"])
    if network == "film":
        return reference_film(w, x, onehot, m, options["encoder_depth"])
    return reference_paco(w, x, onehot, m)


@pytest.mark.parametrize("layout", ["grouped", "mixed"])
@pytest.mark.parametrize("network", NETWORKS)
def test_the_module_computes_the_reference_equations(network, layout):
    net = module(network)
    state, onehot = batch()
    got = run(net, network, state, onehot, layout)  # [members, K, B, out]
    w = {name: value.detach().clone() for name, value in net.state_dict().items()}
    x, rows_onehot = state.reshape(-1, STATE), onehot.reshape(-1, TASKS)
    if network in ("mlp", "multi-head"):
        x = torch.cat([x, rows_onehot], -1)
    for m in range(MEMBERS):
        expected = reference(network, w, x, rows_onehot, m).view(TASKS, BATCH, OUT)
        torch.testing.assert_close(got[m], expected, rtol=1e-6, atol=1e-12)


# -- acting (one row per environment) and training ([K, B]) give the same outputs ---------------


def agents(network: str):
    """A float64 actor and twin critic on the small shapes, every parameter redrawn."""
    torch.manual_seed(0)
    settings = dict(network=network, network_options=SMALL.get(network, {}), init="he")
    actor = Actor(STATE + TASKS, ACTIONS, HIDDEN, num_tasks=TASKS, **settings).double()
    critic = Critic(STATE + TASKS, ACTIONS, HIDDEN, num_tasks=TASKS, **settings).double()
    with torch.no_grad():
        for p in [*actor.parameters(), *critic.parameters()]:
            p.copy_(0.5 * torch.randn_like(p))
    return actor, critic


@pytest.mark.parametrize("network", NETWORKS)
def test_acting_rows_give_what_the_training_batch_gives(network):
    actor, critic = agents(network)
    state, onehot = batch()
    obs = torch.cat([state, onehot], -1)
    actions = torch.rand(TASKS, BATCH, ACTIONS, dtype=torch.float64) * 2 - 1
    mean, log_std = actor.distribution(obs, "grouped")
    q = critic(obs, actions, "grouped")  # [critics, K, B]
    for b in range(BATCH):  # one row per environment, each of its own task
        acting_mean, acting_log_std = actor.distribution(obs[:, b])
        torch.testing.assert_close(acting_mean, mean[:, b], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(acting_log_std, log_std[:, b], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(critic(obs[:, b], actions[:, b]), q[:, :, b])
    for k in range(TASKS):  # one task's slice, as under vmap
        torch.testing.assert_close(actor.distribution(obs[k], "single")[0], mean[k])
        torch.testing.assert_close(critic(obs[k], actions[k], "single"), q[:, k])


# -- what each paper defines ---------------------------------------------------------------------


def test_moore_experts_are_orthonormal_for_every_sample():
    net = module("moore", randomise=False)
    state, _ = batch()
    basis = net.basis(state)  # [members, N, experts, width]
    products = basis @ basis.transpose(-1, -2)
    identity = torch.eye(SMALL["moore"]["experts"], dtype=torch.float64).expand_as(products)
    # to the reference's 1e-8 added to each norm, relative to norms of order one
    torch.testing.assert_close(products, identity, rtol=0, atol=1e-6)


def same_state_every_task(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = torch.randn(1, STATE, generator=generator, dtype=torch.float64)
    return state.expand(TASKS, -1), torch.eye(TASKS, dtype=torch.float64)


def test_soft_modules_routing_is_a_distribution_over_modules_that_depends_on_the_task():
    net = module("soft-modules", randomise=False)
    state, onehot = same_state_every_task()
    routes = net.routing_weights(state, onehot)
    modules, layers = SMALL["soft-modules"]["modules"], SMALL["soft-modules"]["layers"]
    assert [r.shape[2:] for r in routes] == [(modules, modules)] * (layers - 1) + [(modules,)]
    for weights in routes:
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        for other in range(1, TASKS):  # the same state, another task: other weights
            assert (weights[:, other] - weights[:, 0]).abs().max() > 1e-6


def test_soft_modules_modules_read_the_state_trunks_output():
    net = module("soft-modules", randomise=False)
    state, onehot = batch()
    seen = {}
    hook = net.module_layers[0].register_forward_hook(lambda _, args, out: seen.update(x=args[0]))
    net(state, onehot, "grouped")
    hook.remove()
    trunk = torch.relu(net.state_trunk(state.reshape(-1, STATE), None, "mixed"))  # [M, N, D]
    inputs = seen["x"].view(MEMBERS, SMALL["soft-modules"]["modules"], *trunk.shape[1:])
    for j in range(inputs.shape[1]):
        torch.testing.assert_close(inputs[:, j], trunk)


def test_care_attention_over_encoders_sums_to_one_and_depends_on_the_task():
    net = module("care", randomise=False)
    _, attention = net.attention_weights(torch.eye(TASKS, dtype=torch.float64))  # [M, K, E]
    assert attention.shape[-1] == SMALL["care"]["experts"] and (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))
    for other in range(1, TASKS):
        assert (attention[:, other] - attention[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("layout", ["grouped", "mixed"])
def test_paco_each_layer_is_its_tasks_composition_of_the_parameter_sets(layout):
    net = module("paco")
    compositions = net.compositions(torch.eye(TASKS, dtype=torch.float64))  # [M, K, S]
    # each task's vector: its own row plus the bias all tasks share
    own = net.compositions.table.weight + net.compositions.bias.bias
    torch.testing.assert_close(compositions, own)
    generator = torch.Generator().manual_seed(3)
    mix = compositions.repeat_interleave(BATCH, dim=1)  # each row's task's
    for layer in net.layers:
        fan_in = layer.weight.shape[2]
        h = torch.randn(MEMBERS, TASKS * BATCH, fan_in, generator=generator, dtype=torch.float64)
        got = layer(h, mix, layout, TASKS).view(MEMBERS, TASKS, BATCH, -1)
        weight = torch.einsum("mks,msio->mkio", compositions, layer.weight)  # Σ_s w_s φ_s
        bias = torch.einsum("mks,msio->mkio", compositions, layer.bias)
        grouped = h.view(MEMBERS, TASKS, BATCH, fan_in)
        expected = torch.einsum("mkbi,mkio->mkbo", grouped, weight) + bias
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_film_output_changes_with_the_state_at_initialisation():
    """At initialisation FiLM's outputs spread over states as much as the multi-head MLP's of the
    same widths, within a factor of ten (the JAX code's FiLM, scales near 0.1, is 1e-3 as wide:
    docs/benchmarks.md)."""
    state = 0.5 * torch.randn(TASKS, 256, STATE, dtype=torch.float64)
    onehot = torch.eye(TASKS, dtype=torch.float64)[:, None].expand(-1, 256, -1)
    spread = {
        network: run(module(network, randomise=False), network, state, onehot, "grouped")
        .std(dim=2)
        .mean()
        for network in ("film", "multi-head")
    }
    assert 0.1 < spread["film"] / spread["multi-head"] < 10


# -- at initialisation, every network responds to the state on multi-head's order ---------------


@pytest.fixture(scope="module")
def spreads() -> dict[str, tuple[float, float]]:
    """scripts/init_spread.py's measurement (MT10 shapes, 3 × 400, init=he, states from
    0.5 · N(0, 1), each spread averaged over tasks and three seeds) on 128 states per task
    instead of 512: each ratio moves by under 3% (docs/benchmarks.md has the full table)."""
    return spread_table(["multi-head", *FIELD], range(3), states=128)


@pytest.mark.parametrize("network", FIELD)
def test_at_initialisation_each_network_responds_to_the_state_as_multi_head_does(network, spreads):
    (mean, q), (base_mean, base_q) = spreads[network], spreads["multi-head"]
    assert 0.1 <= mean / base_mean <= 10, f"policy mean spread {mean / base_mean:.3g}"
    assert 0.1 <= q / base_q <= 10, f"Q spread {q / base_q:.3g}"


# -- runs saved before the architectures followed their reference code (checkpoint format 3) ----

EQUAL_WIDTHS = {"care": {"experts": 3}, "film": {"encoder_width": 6, "embedding_width": 6}}


def trained(network: str, options: dict) -> MTSAC:
    """A small MTSAC after a few updates, so that its optimizers hold moments."""
    model = MTSAC(
        "MlpPolicy",
        point_tasks(TASKS),
        aggregator="mean",
        learning_starts=10,
        batch_size=4 * TASKS,
        buffer_size=500,
        policy_kwargs={"net_arch": [8, 8], "network": network, "network_options": options},
        seed=0,
        device="cpu",
    )
    return model.learn(12)


def observations() -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    return torch.cat([torch.randn(TASKS, 2, generator=generator), torch.eye(TASKS)], -1)


def assert_same_networks(model: MTSAC, expected: MTSAC) -> None:
    """The same actions, and the same Q-values of them, on a few observations."""
    obs = observations()
    with torch.no_grad():
        actions = expected.policy.actor.deterministic(obs)
        torch.testing.assert_close(model.policy.actor.deterministic(obs), actions)
        torch.testing.assert_close(
            model.policy.critic(obs, actions), expected.policy.critic(obs, actions)
        )


@pytest.mark.parametrize(
    ("network", "options"),
    [
        ("soft-modules", SMALL["soft-modules"]),
        ("paco", SMALL["paco"]),
        ("care", SMALL["care"]),  # encoder_width 6, embedding_width 7: the encoders' shapes
        ("film", SMALL["film"]),
    ],
)
def test_an_older_checkpoint_of_a_reshaped_network_is_refused_saying_what_changed(network, options):
    state = trained(network, options).checkpoint_state(False)
    state["format_version"] = 3
    with pytest.raises(CheckpointError, match=f"holds a {network} network in checkpoint format 3"):
        MTSAC.from_state(state, source="old.pt")


@pytest.mark.parametrize("network", ["mlp", "multi-head", "moore", "care"])
def test_an_older_checkpoint_of_an_unchanged_network_keeps_its_meaning(network):
    model = trained(network, EQUAL_WIDTHS.get(network, SMALL.get(network, {})))
    state = model.checkpoint_state(False)
    state["format_version"] = 3  # these networks' weights are laid out as they were
    added = ("clip_q_predictions", "alpha_learning_rate", "task_loss_weights")
    for key in added:  # agent settings that format 3 did not write
        del state["hyperparameters"][key]
    loaded = MTSAC.from_state(state)
    assert_same_networks(loaded, model)
    assert [getattr(loaded, key) for key in added] == [False, None, "none"]


def older_film_state(state: dict, depth: int) -> dict:
    """The checkpoint format 3 wrote for the same FiLM: scales then shifts, each scale the
    layer's output itself (one more than now in the scales' biases)."""
    state = {**state, "format_version": 3, "policy": dict(state["policy"])}
    layers = depth + 1
    older = [2 * i for i in range(layers)] + [2 * i + 1 for i in range(layers)]
    names = {}
    for network in ("actor", "critic", "critic_target"):
        names[network] = [name for name in state["policy"] if name.startswith(f"{network}.")]
        for kind in ("weight", "bias"):
            name = f"{network}.net.film.layers.{depth}.{kind}"
            value = state["policy"][name][..., older].clone()
            if kind == "bias":
                value[..., :layers] += 1.0
            state["policy"][name] = value
    for network in ("actor", "critic"):
        optimizer = state[network]["optimizer"]
        moments = dict(optimizer["state"])
        for kind in ("weight", "bias"):
            index = names[network].index(f"{network}.net.film.layers.{depth}.{kind}")
            moments[index] = {
                key: value[..., older] if value.dim() else value
                for key, value in moments[index].items()
            }
        state[network] = {**state[network], "optimizer": {**optimizer, "state": moments}}
    return state


def test_an_older_film_checkpoint_computes_what_it_computed_before():
    options = EQUAL_WIDTHS["film"]
    model = trained("film", options)
    old = older_film_state(model.checkpoint_state(False), depth=2)
    # the older weights, under the equations of mtrl's FiLM before format 4, give today's outputs
    obs = observations().double()
    weights = {
        name.removeprefix("actor.net."): value.double()
        for name, value in old["policy"].items()
        if name.startswith("actor.net.")
    }
    earlier = reference_film(weights, obs[:, :2], obs[:, 2:], 0, 2, before_format_4=True)
    with torch.no_grad():
        now = model.policy.actor.net(observations()[:, :2], observations()[:, 2:], "mixed")[0]
    torch.testing.assert_close(earlier.float(), now, rtol=1e-5, atol=1e-6)
    # and the checkpoint, read today, is that network again, its Adam moments with it
    loaded = MTSAC.from_state(old)
    assert_same_networks(loaded, model)
    for network in ("actor", "critic"):
        got = getattr(loaded, f"{network}_step").optimizer.state_dict()["state"]
        expected = getattr(model, f"{network}_step").optimizer.state_dict()["state"]
        for index, moments in expected.items():
            for key, value in moments.items():
                torch.testing.assert_close(got[index][key], value, msg=f"{network} {index} {key}")
