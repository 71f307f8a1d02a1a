"""The update on CUDA: the same as on the CPU, never waiting for the host, and captured.

Skipped without CUDA (``scripts/device_check.sh`` runs them on a GPU machine).
``MTRL_TEST_DEVICE=cpu`` runs them on the CPU, which checks the tests: each update is still
compared with a reference computed another way (K backward passes, one per task).
"""

from __future__ import annotations

import pytest
import torch

from mtrl.aggregators import available, make_aggregator
from mtrl.capture import NOT_CAPTURABLE
from mtrl.replay import TaskBatch
from mtrl.testing import injected_draws
from tests.agents.test_mtsac import TASKS, make_model
from tests.agents.test_no_host_reads import BRC_SETTINGS
from tests.conftest import TEST_DEVICE as DEVICE

GRADIENT_METHODS = [m for m in available() if not make_aggregator(m).loss_based]

pytestmark = pytest.mark.cuda


def random_batch(seed: int = 0, batch_per_task: int = 8, uniform: bool = False) -> TaskBatch:
    """Random transitions; ``uniform``: with the row weights of a uniform batch, whose tasks'
    counts vary from batch to batch."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(TASKS, batch_per_task, 2, generator=generator)
    onehot = torch.eye(TASKS).unsqueeze(1).expand(TASKS, batch_per_task, TASKS)
    observations = torch.cat([obs, onehot], -1)
    weights = None
    if uniform:
        counts = torch.randint(batch_per_task + 1, (TASKS, 1), generator=generator)
        weights = (torch.arange(batch_per_task) < counts).float() * 1.5
    return TaskBatch(
        observations,
        torch.rand(TASKS, batch_per_task, 2, generator=generator) * 2 - 1,
        observations + 0.1,
        torch.zeros(TASKS, batch_per_task),
        torch.randn(TASKS, batch_per_task, generator=generator),
        weights,
    )


def on(device: str, batch: TaskBatch) -> TaskBatch:
    return TaskBatch(*(None if field is None else field.to(device) for field in batch))


def updates(model, device: str, steps: int = 3) -> list[torch.Tensor]:
    """Run ``steps`` updates on the same batches and draws on every device; each network's
    combined update (its gradient just before its optimizer steps), flattened, in order."""
    combined = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        combined.append(torch.cat([g.detach().flatten() for g in grads]).cpu())

    for optimizer in (model.critic.optimizer, model.actor.optimizer):
        optimizer.register_step_pre_hook(record)
    with injected_draws():
        for step in range(steps):
            model.update(on(device, random_batch(step)))
    return combined


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_updates_on_the_device_as_k_backward_passes_on_the_cpu(method):
    """The training path on the device (one grouped pass, the Gram matrix layer by layer)
    against the reference on the CPU: K backward passes, one per task."""
    model = make_model(aggregator=method, device=DEVICE)
    reference = make_model(aggregator=method, device="cpu", per_task_gradients="loop")
    assert model.critic_step.gradients == "auto"
    parameters, expected_parameters = (list(m.policy.parameters()) for m in (model, reference))
    for mine, theirs in zip(parameters, expected_parameters, strict=True):
        assert torch.equal(mine.cpu(), theirs)  # built on the CPU, then moved
    got, expected = updates(model, DEVICE), updates(reference, "cpu")
    assert len(got) == len(expected) == 6  # critic and actor, three updates
    for step, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        scale = theirs.abs().max()
        close = torch.isclose(mine, theirs, rtol=1e-4, atol=1e-4 * float(scale))
        gap = float((mine - theirs).abs().max())
        assert close.all(), f"update {step}: {int((~close).sum())} entries differ, by up to {gap}"
    for mine, theirs in zip(parameters, expected_parameters, strict=True):
        torch.testing.assert_close(mine.cpu(), theirs, rtol=1e-4, atol=1e-5)
    nothing_skipped = {"critic": 0, "actor": 0, "alpha": 0}
    assert model.skipped_updates == reference.skipped_updates == nothing_skipped


HOST_BY_DESIGN = {
    "aligned-mtl": pytest.mark.xfail(strict=True, reason=NOT_CAPTURABLE["aligned-mtl"]),
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


def test_a_uniform_batch_is_drawn_and_trained_on_without_waiting_for_the_host():
    """BRC's recipe, its uniform batches included, captured as a CUDA graph."""
    if torch.device(DEVICE).type != "cuda":
        pytest.skip("the sync watch is CUDA's (tests/agents/test_no_host_reads.py on the CPU)")
    model = make_model(device=DEVICE, compile=True, **BRC_SETTINGS)
    model.learn(150)  # past the eager updates: the graph is recorded and replayed
    assert model.captured.graph is not None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            model.update(model.sample_batch(model.batch_size))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("sampling", ["per_task", "uniform"])
@pytest.mark.parametrize("method", ["gradops", "pcgrad", "cagrad", "sdmgrad-os", "mean"])
def test_a_captured_update_equals_the_eager_one(method, sampling):
    if torch.device(DEVICE).type != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    models = {
        compile: make_model(
            aggregator=method, device=DEVICE, compile=compile, batch_sampling=sampling
        )
        for compile in (False, True)
    }
    assert models[True].captured is not None and models[False].captured is None
    uniform = sampling == "uniform"
    for model in models.values():
        torch.cuda.manual_seed(0)  # the actions' noise: the same draws in the same order
        for step in range(6):  # three eager, the recording, then replays
            model.update(on(DEVICE, random_batch(step, uniform=uniform)))
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
