import pytest
import torch

from mtrl.optim import AdaTask


def test_with_one_task_it_is_adam():
    torch.manual_seed(0)
    ours, reference = torch.randn(5, 3, requires_grad=True), None
    reference = ours.detach().clone().requires_grad_(True)
    adatask = AdaTask([ours], num_tasks=1, lr=1e-2)
    adam = torch.optim.Adam([reference], lr=1e-2)
    for _ in range(20):
        gradient = torch.randn(5, 3)
        adatask.set_task_gradients({ours: gradient.unsqueeze(0)})
        adatask.step()
        reference.grad = gradient
        adam.step()
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_a_task_with_small_gradients_is_not_swamped():
    # On one coordinate task 0 pulls with 1000 and task 1 with -1. Adam sees their sum and
    # steps as task 0 wants; AdaTask normalises each task's gradient on its own, so the two
    # steps cancel. On the other coordinate only task 1 pulls, and it moves a full step.
    gradients = torch.tensor([[1000.0, 0.0], [-1.0, 1.0]])
    param = torch.zeros(2, requires_grad=True)
    optimizer = AdaTask([param], num_tasks=2, lr=0.1)
    optimizer.set_task_gradients({param: gradients})
    optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([0.0, -0.1]), rtol=1e-5, atol=1e-7)
    adam_param = torch.zeros(2, requires_grad=True)
    adam = torch.optim.Adam([adam_param], lr=0.1)
    adam_param.grad = gradients.sum(0)
    adam.step()
    torch.testing.assert_close(adam_param.detach(), torch.tensor([-0.1, -0.1]))


def test_parameters_without_task_gradients_take_an_adam_step():
    shared, head = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = AdaTask([shared, head], num_tasks=4, lr=0.1)
    head.grad = torch.ones(3)
    optimizer.set_task_gradients({shared: torch.ones(4, 2)})
    optimizer.step()
    torch.testing.assert_close(shared.detach(), torch.full((2,), -0.4), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.detach(), torch.full((3,), -0.1), rtol=1e-5, atol=1e-7)


def test_state_survives_a_safe_round_trip(tmp_path):
    param = torch.zeros(2, requires_grad=True)
    optimizer = AdaTask([param], num_tasks=3)
    optimizer.set_task_gradients({param: torch.randn(3, 2)})
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "state.pt")
    restored = AdaTask([torch.zeros(2, requires_grad=True)], num_tasks=3)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    torch.testing.assert_close(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_wrongly_shaped_task_gradients_are_refused():
    param = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(3, 2\)"):
        AdaTask([param], num_tasks=3).set_task_gradients({param: torch.zeros(2, 2)})


def test_a_step_with_found_inf_changes_nothing():
    param = torch.zeros(2, requires_grad=True)
    optimizer = AdaTask([param], num_tasks=2, lr=0.1)
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.set_task_gradients({param: torch.full((2, 2), float("nan"))})
    optimizer.step()
    assert torch.equal(param.detach(), torch.zeros(2))
    state = optimizer.state_dict()["state"][0]
    assert state["step"] == 0 and torch.equal(state["exp_avg"], torch.zeros(2, 2))
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.set_task_gradients({param: torch.ones(2, 2)})
    optimizer.step()  # the first real step is a full Adam step per task
    torch.testing.assert_close(param.detach(), torch.full((2,), -0.2), rtol=1e-5, atol=1e-7)
