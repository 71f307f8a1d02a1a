"""A whole MTSAC update replayed as one CUDA graph.

``backward``, ``autograd.grad`` and ``optimizer.step`` break a ``torch.compile`` graph, but a
CUDA graph records the kernels of the eager step as they are launched: the critic's, the
actor's and the temperatures' steps, the target update and the non-finite skip, once, then
replays them for every batch with no Python and no launch overhead. What that needs:

- static inputs: each batch is copied into the tensors the graph was recorded with;
- no host synchronisation inside, and no data from the host, whose copy a capture cannot hold
  (``tests/agents/test_no_host_reads.py`` watches for both);
- optimizers that keep their step counts on the device (``capturable=True``);
- random numbers from device generators the graph knows: the default CUDA generator (the
  actions' noise) and each method's own (:meth:`mtrl.aggregators.Aggregator.generators`);
- statistics recorded outside: the graph's outputs are static tensors, which the conflict
  recorders and the training statistics copy after each replay.

The first few updates run eagerly on a side stream, as updates of the run, so that lazily made
state (optimizer moments, the methods' state, cuBLAS workspaces, compiled kernels) exists before
the recording; every later one is a replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mtrl.replay import TaskBatch

# Methods that read the device from the host within a step, which a CUDA graph cannot replay.
NOT_CAPTURABLE = {
    "aligned-mtl": "it needs the eigenvalues of the Gram matrix, whose check waits for the host",
}
EAGER_UPDATES = 3


def check_capturable(method: str) -> None:
    """Refuse a method that cannot run inside a captured update, saying why."""
    if method in NOT_CAPTURABLE:
        raise ValueError(
            f"agent.compile on CUDA captures the update as a CUDA graph, and {method} cannot "
            f"run inside one: {NOT_CAPTURABLE[method]}; use compile=false with it"
        )


def capture_update(model: Any) -> CapturedUpdate:
    """An MTSAC's ``gradient_step`` as a :class:`CapturedUpdate`, with optimizers that keep
    their step counts on the device."""
    check_capturable(model.aggregator_name)
    for optimizer in (model.actor.optimizer, model.critic.optimizer, model.alpha_optimizer):
        if isinstance(optimizer, torch.optim.Adam):
            for group in optimizer.param_groups:
                group["capturable"] = True
            optimizer.defaults["capturable"] = True
    steps = (model.critic_step, model.actor_step)
    return CapturedUpdate(
        model.gradient_step, lambda: [g for s in steps for g in s.aggregator.generators()]
    )


class CapturedUpdate:
    """``step(batch) -> outputs``, eager for the first :data:`EAGER_UPDATES` calls, then
    recorded once as a CUDA graph and replayed; ``generators`` are the device generators the
    step draws from besides the default one."""

    def __init__(
        self, step: Callable[[TaskBatch], Any], generators: Callable[[], list[torch.Generator]]
    ) -> None:
        self.step, self.generators = step, generators
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch: TaskBatch | None = None
        self.outputs: Any = None

    def __call__(self, batch: TaskBatch) -> Any:
        self.calls += 1
        if self.calls <= EAGER_UPDATES:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self.step(batch)
            torch.cuda.current_stream().wait_stream(side)
            return outputs
        if self.graph is None:
            self.batch = TaskBatch(*(None if t is None else t.clone() for t in batch))
            self.graph = torch.cuda.CUDAGraph()
            for generator in self.generators():
                if generator.device.type == "cuda":
                    self.graph.register_generator_state(generator)
            with torch.cuda.graph(self.graph):
                self.outputs = self.step(self.batch)
        else:
            for static, new in zip(self.batch, batch, strict=True):
                if static is not None:
                    static.copy_(new)
        self.graph.replay()
        return self.outputs
