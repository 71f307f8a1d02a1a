"""The multi-task backward step: Gram-first and stored per-task gradients give the same update,
Gram-first never holds a [K, P] tensor, and the automatic choice follows the sizes."""

from __future__ import annotations

import copy

import pytest
import torch

from mtrl import backward
from mtrl.agents.mtsac import actor_task_loss, critic_task_loss
from mtrl.agents.networks import Actor, Critic
from mtrl.aggregators import available, make_aggregator
from mtrl.backward import STORE_RATIO, MultiTaskBackward, stores
from mtrl.testing import LargeTensors

TASKS, BATCH, OBS, ACTIONS = 3, 5, 6, 2
GRAM_BASED = [m for m in available() if not make_aggregator(m).loss_based]
LAYOUTS = {"plain": [], "multi-head": [2], "task-first-layer": [0]}


def seeded(method: str):
    """The method, with any random draws it makes seeded alike in every copy."""
    fields = make_aggregator(method).hparams
    return make_aggregator(method, **({"seed": 0} if "seed" in fields else {}))


def grouped_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    onehot = torch.eye(TASKS)[:, None].expand(-1, BATCH, -1)
    obs = torch.cat([torch.randn(TASKS, BATCH, OBS, generator=generator), onehot], -1)
    actions = torch.rand(TASKS, BATCH, ACTIONS, generator=generator) * 2 - 1
    target = torch.randn(TASKS, BATCH, generator=generator)
    noise = torch.randn(TASKS, BATCH, ACTIONS, generator=generator)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    return obs, actions, target, noise, alpha


def network_case(kind: str, task_layers, hidden=(16, 20)):
    """A network, its loss and inputs: the critic's TD loss or the actor's loss."""
    torch.manual_seed(0)
    critic = Critic(OBS + TASKS, ACTIONS, hidden, num_tasks=TASKS, task_layers=task_layers)
    obs, actions, target, noise, alpha = grouped_batch()
    if kind == "critic":
        return critic, critic_task_loss, (obs, actions, target), (critic,)
    actor = Actor(OBS + TASKS, ACTIONS, hidden, num_tasks=TASKS, task_layers=task_layers)
    frozen = {name: p.detach() for name, p in critic.named_parameters()}
    return actor, actor_task_loss, (obs, noise, alpha), (actor, critic, frozen)


def step_once(network, loss_fn, task_inputs, shared_inputs, method, **modes):
    """One step of a copy of ``network``; returns the result and the gradients it wrote (an
    optimizer with a zero learning rate leaves the weights as they were)."""
    network = copy.deepcopy(network)
    if shared_inputs and shared_inputs[0] is not network:  # the actor's loss also takes it
        shared_inputs = (network, *shared_inputs[1:])
    elif shared_inputs:
        shared_inputs = (network,)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    step = MultiTaskBackward(network, optimizer, method, **modes)
    result = step(loss_fn, task_inputs, shared_inputs)
    return result, {name: p.grad for name, p in network.named_parameters()}


@pytest.mark.parametrize("update", ["products", "backward"])
@pytest.mark.parametrize("kind", ["critic", "actor"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", GRAM_BASED)
def test_gram_first_gives_the_stored_weights_and_update(method, layout, kind, update):
    network, loss_fn, task_inputs, shared_inputs = network_case(kind, LAYOUTS[layout])
    stored, stored_grads = step_once(
        network, loss_fn, task_inputs, shared_inputs, seeded(method), per_task_gradients="grouped"
    )
    gram, gram_grads = step_once(
        network,
        loss_fn,
        task_inputs,
        shared_inputs,
        seeded(method),
        per_task_gradients="gram",
        gram_update=update,
    )
    assert_close_in_scale(gram.layer_grams, stored.layer_grams)
    assert_close_in_scale(gram.weights, stored.weights)
    assert stored_grads.keys() == gram_grads.keys()
    for name, expected in stored_grads.items():
        assert_close_in_scale(gram_grads[name], expected, name)


def assert_close_in_scale(got, expected, what=""):
    """Equal but for float32 rounding: to 1e-5 of the largest entry, whose rounding every
    entry's sums share."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=what)


# Every way of having the per-task gradients and forming the update; "loop" (K backward passes)
# is the reference the others must equal.
WAYS = {mode: {"per_task_gradients": mode} for mode in ("loop", "grouped", "gram", "auto", "vmap")}
WAYS["gram, backward"] = {"per_task_gradients": "gram", "gram_update": "backward"}


def assert_every_way_gives_the_update_of_k_backward_passes(
    model, loss_fn, inputs, shared, method: str, gram: bool = False
) -> None:
    """One step of ``method`` in each of :data:`WAYS` gives the combination weights and the
    gradients of K backward passes (and, with ``gram``, the Gram matrix of the Gram-first
    ways)."""
    results = {
        way: step_once(model, loss_fn, inputs, shared, seeded(method), **settings)
        for way, settings in WAYS.items()
    }
    reference, reference_grads = results["loop"]
    for way, (result, grads) in results.items():
        assert_close_in_scale(result.weights, reference.weights, way)
        if gram and result.layer_grams is not None:
            assert_close_in_scale(result.gram, reference.gram, way)
        for name, expected in reference_grads.items():
            assert_close_in_scale(grads[name], expected, f"{way}: {name}")


# Hidden widths at which the Gram-first layers take each path, with a grouped batch of 15 rows:
# the products of rows while the layer is wider than the batch, tiles of the weight when it is
# narrower (as at widths 1024 to 4096 with 128 rows per task).
GRAM_PATHS = {"rows": (64, 64), "tiles": (14, 14)}


@pytest.mark.parametrize("kind", ["critic", "actor"])
@pytest.mark.parametrize("update", ["products", "backward"])
@pytest.mark.parametrize("path", list(GRAM_PATHS))
def test_a_gram_first_step_never_allocates_k_times_a_layer(path, kind, update, monkeypatch):
    network, loss_fn, task_inputs, shared_inputs = network_case(kind, [], GRAM_PATHS[path])
    # several tiles to a layer, as 512 columns are at widths above 512
    monkeypatch.setattr(backward, "TILE_COLUMNS", 4)
    taken = {}  # output width → whether the Gram matrices came from the rows

    def by_rows(inputs, output_grads):
        rows = choose(inputs, output_grads)
        taken.setdefault(output_grads.shape[-1], set()).add(rows)
        return rows

    choose = backward.by_rows
    monkeypatch.setattr(backward, "by_rows", by_rows)
    # K times one member's weight: the per-task gradients of one layer of one critic
    largest = max(layer.weight[0].numel() for layer in network.shared_layers().values())
    for mode, allowed in (("gram", True), ("grouped", False)):
        watch = LargeTensors(TASKS * largest)
        with watch:
            step_once(
                network,
                loss_fn,
                task_inputs,
                shared_inputs,
                seeded("gradops"),
                per_task_gradients=mode,
                gram_update=update,
            )
        # the stored path holds [K, *weight] per-task gradients: the watch sees them
        assert (watch.seen == []) == allowed, (mode, watch.seen)
    # the hidden layers took the path (the output layer is narrow: tiles at any width)
    assert taken[GRAM_PATHS[path][0]] == {path == "rows"}


def layer_shapes(width_in, width_out, tasks, batch_per_task, members=2):
    meta = {"device": "meta"}
    rows = tasks * batch_per_task
    return torch.empty(members, rows, width_in, **meta), torch.empty(
        members, rows, width_out, **meta
    )


@pytest.mark.parametrize(("width", "stored"), [(400, True), (500, True), (1024, False)])
def test_auto_stores_a_layer_while_its_per_task_gradients_are_small(width, stored):
    # K·(in+1)·out against STORE_RATIO·N·(in+out) with N = K·B: for a square layer, stored
    # up to a width of about 2 · STORE_RATIO · B, whatever the number of tasks
    from mtrl.agents.networks import EnsembleLinear

    for tasks in (10, 50):
        layer = EnsembleLinear(2, 1, width, width)
        assert stores(layer, *layer_shapes(width, width, tasks, 128), tasks) == stored
    assert 2 * STORE_RATIO * 128 == 512
    # a first layer (Meta-World's 39 values and the one-hot in) is stored at any width
    first = EnsembleLinear(2, 1, 49, 4096)
    assert stores(first, *layer_shapes(49, 4096, 10, 128), 10)


def test_clipping_bounds_the_global_norm_of_the_update():
    network, loss_fn, task_inputs, shared_inputs = network_case("critic", [])
    _, free = step_once(network, loss_fn, task_inputs, shared_inputs, seeded("gradops"))
    _, clipped = step_once(
        network, loss_fn, task_inputs, shared_inputs, seeded("gradops"), max_grad_norm=1e-3
    )
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in clipped.values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)
    for name, grad in free.items():  # the same direction, shorter
        torch.testing.assert_close(clipped[name], grad * (clipped[name].norm() / grad.norm()))


@pytest.mark.parametrize(("fan_in", "fan_out", "rows_cheaper"), [(7, 48, False), (40, 48, True)])
def test_a_layer_gram_from_blocks_or_from_rows_is_that_of_its_per_task_gradients(
    fan_in, fan_out, rows_cheaper
):
    from mtrl.agents.networks import EnsembleLinear
    from mtrl.backward import by_rows, tile_shape
    from mtrl.jacobian import task_gram

    torch.manual_seed(0)
    layer, tasks, members = EnsembleLinear(2, 1, fan_in, fan_out), 4, 2
    inputs = torch.randn(members, tasks * 6, fan_in, dtype=torch.float64)
    output_grads = torch.randn(members, tasks * 6, fan_out, dtype=torch.float64)
    stored = layer.per_task_gradients(inputs, output_grads, tasks)
    expected = sum(task_gram(g) for g in stored.values())
    assert by_rows(inputs, output_grads) == rows_cheaper
    tiles = [(1, 1), (5, 3), (fan_in, 5), (3, fan_out), tile_shape(inputs, output_grads, tasks)]
    for tile in tiles:
        got = layer.task_gram(inputs, output_grads, tasks, tile)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)
    got = layer.task_gram_by_rows(inputs, output_grads, tasks)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)
