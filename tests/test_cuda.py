"""The update on CUDA: the same as on the CPU, never waiting for the host, and captured.

Skipped without CUDA (``scripts/device_check.sh`` runs them on a GPU machine).
``MTRL_TEST_DEVICE=cpu`` runs them against the CPU itself, which checks the tests.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from mtrl.aggregators import available, make_aggregator
from mtrl.capture import NOT_CAPTURABLE
from mtrl.replay import TaskBatch
from tests.agents.test_mtsac import TASKS, make_model
from tests.conftest import TEST_DEVICE as DEVICE

GRADIENT_METHODS = [m for m in available() if not make_aggregator(m).loss_based]

pytestmark = pytest.mark.cuda


@contextlib.contextmanager
def injected_draws(seed: int = 0):
    """Every random draw of the update (the actions' noise, the methods' visiting orders,
    groupings and samples) from one CPU generator, then moved to the device asked for: the
    same numbers on every device."""
    generator = torch.Generator().manual_seed(seed)
    rand, randperm, randn_like = torch.rand, torch.randperm, torch.randn_like

    def draw_rand(*size, generator=None, dtype=None, device=None, **kwargs):
        return rand(*size, generator=cpu, dtype=dtype).to(device)

    def draw_randperm(n, generator=None, device=None, **kwargs):
        return randperm(n, generator=cpu).to(device)

    def draw_randn_like(tensor, **kwargs):
        return torch.randn(tensor.shape, generator=cpu, dtype=tensor.dtype).to(tensor.device)

    cpu = generator
    torch.rand, torch.randperm, torch.randn_like = draw_rand, draw_randperm, draw_randn_like
    try:
        yield
    finally:
        torch.rand, torch.randperm, torch.randn_like = rand, randperm, randn_like


def random_batch(seed: int = 0, batch_per_task: int = 8) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(TASKS, batch_per_task, 2, generator=generator)
    onehot = torch.eye(TASKS).unsqueeze(1).expand(TASKS, batch_per_task, TASKS)
    observations = torch.cat([obs, onehot], -1)
    return TaskBatch(
        observations,
        torch.rand(TASKS, batch_per_task, 2, generator=generator) * 2 - 1,
        observations + 0.1,
        torch.zeros(TASKS, batch_per_task),
        torch.randn(TASKS, batch_per_task, generator=generator),
    )


def on(device: str, batch: TaskBatch) -> TaskBatch:
    return TaskBatch(*(field.to(device) for field in batch))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_updates_on_the_device_as_on_the_cpu(method):
    models = {device: make_model(aggregator=method, device=device) for device in ("cpu", DEVICE)}
    parameters = {d: list(m.policy.parameters()) for d, m in models.items()}
    for cpu, device in zip(parameters["cpu"], parameters[DEVICE], strict=True):
        assert torch.equal(cpu, device.cpu())  # built on the CPU, then moved
    for device, model in models.items():
        with injected_draws():
            for step in range(3):
                model.update(on(device, random_batch(step)))
    for cpu, device in zip(parameters["cpu"], parameters[DEVICE], strict=True):
        torch.testing.assert_close(device.cpu(), cpu, rtol=1e-4, atol=1e-5)
    for network in ("critic", "actor"):
        expected = getattr(models["cpu"], f"{network}_step")
        moved = getattr(models[DEVICE], f"{network}_step")
        assert moved.skipped.item() == expected.skipped.item() == 0


HOST_BY_DESIGN = {
    "aligned-mtl": pytest.mark.xfail(strict=True, reason=NOT_CAPTURABLE["aligned-mtl"]),
    "sdmgrad-os": pytest.mark.xfail(strict=False, reason=NOT_CAPTURABLE["sdmgrad-os"]),
}


@pytest.mark.parametrize(
    "method", [pytest.param(m, marks=HOST_BY_DESIGN.get(m, ())) for m in GRADIENT_METHODS]
)
def test_an_update_never_waits_for_the_host(method):
    if torch.device(DEVICE).type != "cuda":
        pytest.skip("the sync watch is CUDA's (tests/agents/test_no_host_reads.py on the CPU)")
    model = make_model(aggregator=method, device=DEVICE)
    model.learn(150)  # lazily made state (optimizer moments, the methods' own) exists
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            model.update(model.replay_buffer.sample_tasks(8))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method", ["gradops", "pcgrad", "cagrad", "mean"])
def test_a_captured_update_equals_the_eager_one(method):
    if torch.device(DEVICE).type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    models = {
        compile: make_model(aggregator=method, device=DEVICE, compile=compile)
        for compile in (False, True)
    }
    assert models[True].captured is not None and models[False].captured is None
    for model in models.values():
        torch.cuda.manual_seed(0)  # the actions' noise: the same draws in the same order
        for step in range(6):  # three eager, the recording, then replays
            model.update(on(DEVICE, random_batch(step)))
    assert models[True].captured.graph is not None
    eager, captured = (list(models[c].policy.parameters()) for c in (False, True))
    for mine, theirs in zip(captured, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    # the statistics, recorded outside the graph, saw every update
    for recorder in ("critic_conflicts", "actor_conflicts"):
        replayed, expected = (getattr(models[c], recorder).means() for c in (True, False))
        assert replayed.keys() == expected.keys()
        for key, value in expected.items():
            assert replayed[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
