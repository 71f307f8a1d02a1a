"""The update never reads a tensor back to the host, so on a GPU it never waits for one.

On a GPU every ``.item()``, ``bool(tensor)``, ``.tolist()`` or ``int(tensor)`` stalls the host
until the device has caught up. These tests run a whole update with those methods watched; CPU
tensors stand in for the device's.
"""

import traceback

import pytest
import torch

from mtrl.aggregators import available
from tests.agents.test_mtsac import make_model

READS = ("item", "__bool__", "tolist", "__int__", "__float__", "__index__", "numpy")
# SDMGrad-OS draws its task sample with a CPU generator on the host, by design: those reads
# touch host tensors only, never the device's.
HOST_SIDE = ("sdmgrad.py", "in sample")


def host_reads(model, batch):
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def watched(name):
        def read(self, *args, **kwargs):
            stack = "".join(traceback.format_stack(limit=3)[:-1])
            if not all(marker in stack for marker in HOST_SIDE):
                reads.append(f"{name}: {stack}")
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, watched(name))
    try:
        model.update(batch)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return reads


@pytest.mark.parametrize("method", available())
def test_update_reads_nothing_back(method):
    model = make_model(aggregator=method)
    model.learn(150)
    assert host_reads(model, model.replay_buffer.sample_tasks(8)) == []


@pytest.mark.parametrize(
    "settings",
    [
        {"per_task_gradients": "vmap"},
        {"policy_kwargs": {"net_arch": [32, 32], "optimizer": "adatask", "multi_head": True}},
    ],
    ids=["vmap", "adatask-multi-head"],
)
def test_other_paths_read_nothing_back(settings):
    model = make_model(**settings)
    model.learn(150)
    batch = model.replay_buffer.sample_tasks(8)
    assert host_reads(model, batch) == []
    # a non-finite batch is skipped on the device too
    poisoned = batch._replace(rewards=torch.full_like(batch.rewards, torch.nan))
    assert host_reads(model, poisoned) == []
    assert int(model.skipped_updates["critic"]) == 1
