"""Generators restored from a checkpoint: the saved stream on the same device, a stream seeded
from the saved state on another, the same for the replay buffer and for the methods.

Only a CPU is here, so a device change is a state saved on CUDA (a Philox seed and offset,
16 bytes, as a CUDA generator's ``get_state`` gives) restored onto the CPU: the path a run
takes when it resumes on the CPU from a GPU checkpoint. The other direction runs the same code
with the roles swapped; making the generator on a CUDA device is what this machine cannot check.
"""

import numpy as np
import pytest
import torch

from mtrl.agents import MTSAC
from mtrl.aggregators import PCGrad, SDMGradOS
from mtrl.checkpoint import save_atomic
from mtrl.generators import moved, restore_generator
from tests.agents.point_tasks import point_tasks
from tests.agents.test_mtsac import TASKS, make_model
from tests.test_replay import filled_buffer


def cuda_state(seed: int, offset: int = 0) -> torch.Tensor:
    """What ``torch.Generator("cuda").get_state()`` returns: seed and offset, 8 bytes each."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def draws(generator: torch.Generator) -> torch.Tensor:
    return torch.rand(8, generator=generator, device=generator.device)


def test_on_the_same_device_the_saved_stream_continues():
    generator = torch.Generator().manual_seed(3)
    draws(generator)
    state = generator.get_state()
    restored = restore_generator(state, "cpu", "cpu")
    assert torch.equal(draws(restored), draws(generator))
    assert (
        moved(generator, "cpu") is generator and moved(generator, torch.device("cpu")) is generator
    )


def test_on_another_device_a_stream_fixed_by_the_saved_state_starts():
    first, again = (restore_generator(cuda_state(7, 32), "cuda:0", "cpu") for _ in range(2))
    assert first.device == torch.device("cpu")
    assert torch.equal(draws(first), draws(again))
    for other in (cuda_state(7, 36), cuda_state(8, 32)):  # one more draw made, another seed
        assert not torch.equal(draws(restore_generator(other, "cuda:0", "cpu")), draws(first))
    # a CPU generator's state can't be set from a CUDA one's: restoring it there is refused
    with pytest.raises(RuntimeError):
        torch.Generator().set_state(cuda_state(7, 32))


@pytest.mark.parametrize("method", [PCGrad, SDMGradOS])
def test_the_replay_buffer_and_the_methods_agree_on_a_device_change(method):
    buffer = filled_buffer()
    buffer.load_state_dict({**buffer.state_dict(), "generator": cuda_state(5), "device": "cuda:0"})
    seeded = method(seed=1)
    seeded.load_state_dict({"generator": cuda_state(5), "device": "cuda:0"})
    generator = seeded.generator(torch.device("cpu"))
    assert buffer.generator.device == generator.device == torch.device("cpu")
    assert torch.equal(buffer.generator.get_state(), generator.get_state())


def gpu_checkpoint(model: MTSAC) -> dict:
    """``model``'s full checkpoint, with every generator's state as a CUDA device saves it."""
    state = model.checkpoint_state(include_replay_buffer=True)
    state["replay_buffer"] = {**state["replay_buffer"], "generator": cuda_state(11, 64)}
    state["replay_buffer"]["device"] = "cuda:0"
    for network, seed in (("critic", 12), ("actor", 13)):
        part = state[network]
        part["aggregator"] = {"generator": cuda_state(seed, 4), "device": "cuda:0"}
    state["rng"]["cuda"] = [cuda_state(14, 8)]  # the global CUDA generators': unused here
    return state


def test_a_checkpoint_from_a_gpu_resumes_on_the_cpu_the_same_way_each_time(tmp_path):
    model = make_model(aggregator="pcgrad")
    model.learn(90)
    gpu = save_atomic(gpu_checkpoint(model), tmp_path / "gpu.pt")
    cpu = model.save(tmp_path / "cpu.pt", include_replay_buffer=True)

    def resume(path):
        return MTSAC.load(path, env=point_tasks(TASKS), device="cpu")

    resumed = [resume(gpu), resume(gpu)]
    for run in resumed:
        assert run.replay_buffer.generator.device == torch.device("cpu")
        assert run.num_timesteps == 90 and run.replay_buffer.size() == model.replay_buffer.size()
    batches = [run.replay_buffer.sample_tasks(8).observations for run in (*resumed, resume(cpu))]
    assert torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])  # a new stream, not the saved one
    orders = [run.critic_step.aggregator.visiting_orders(TASKS) for run in resumed]
    assert torch.equal(*orders)
    # training goes on, and the same each time (the global generators come from the file too)
    runs = []
    for _ in range(2):
        run = resume(gpu)
        run.learn(30, reset_num_timesteps=False)
        runs.append(run)
    assert runs[0]._n_updates == model._n_updates + 10
    for a, b in zip(*(run.policy.parameters() for run in runs), strict=True):
        assert torch.isfinite(a).all()
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
