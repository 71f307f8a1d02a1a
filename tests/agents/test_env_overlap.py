"""Gradient steps run during the next environment step, on another thread, and none is lost."""

import threading
import time

import pytest
from stable_baselines3.common.callbacks import BaseCallback

from mtrl.agents.env_overlap import StepWhileTraining
from tests.agents.point_tasks import point_tasks
from tests.agents.test_mtsac import TASKS, make_model


class SlowStep(StepWhileTraining):
    """Records which thread stepped the environments, and whether ``during`` overlapped it."""

    def __init__(self, venv, during):
        self.stepping = threading.Event()
        self.step_threads = []
        super().__init__(venv, during)

    def step_async(self, actions):
        inner = self.venv.step

        def step(actions):
            self.step_threads.append(threading.current_thread())
            self.stepping.set()
            return inner(actions)

        self.venv.step = step
        try:
            super().step_async(actions)
        finally:
            self.venv.step = inner


def test_the_environments_step_on_another_thread_while_during_runs():
    seen = []
    env = SlowStep(point_tasks(TASKS), lambda: seen.append(env.stepping.wait(timeout=10)))
    env.reset()
    observations, rewards, _, _ = env.step(env.action_space.sample()[None].repeat(TASKS, 0))
    assert seen == [True]  # during() saw the step already under way
    assert env.step_threads[0] is not threading.current_thread()
    assert observations.shape[0] == rewards.shape[0] == TASKS


def test_an_error_on_either_side_is_raised_after_both_finish():
    def fail():
        raise RuntimeError("update failed")

    env = StepWhileTraining(point_tasks(TASKS), fail)
    env.reset()
    actions = env.action_space.sample()[None].repeat(TASKS, 0)
    with pytest.raises(RuntimeError, match="update failed"):
        env.step(actions)
    env.during = lambda: None
    env.step(actions)  # the environments are usable again: the failed step completed

    env.venv.step = lambda actions: 1 / 0
    with pytest.raises(ZeroDivisionError):
        env.step(actions)


class UpdatesAtEnd(BaseCallback):
    def _on_step(self):
        return True

    def _on_training_end(self):
        self.updates = self.model._n_updates


@pytest.mark.parametrize("overlap", [True, False])
def test_every_round_is_trained_before_learn_and_its_callbacks_end(overlap):
    model = make_model(overlap_env_steps=overlap, learning_starts=30)
    seen = UpdatesAtEnd()
    model.learn(90, callback=seen)
    # one update per vector step after the first 30 env steps (10 vector steps of 3 tasks)
    assert model._n_updates == seen.updates == 90 // TASKS - 30 // TASKS
    model.learn(30, reset_num_timesteps=False)
    assert model._n_updates == 120 // TASKS - 30 // TASKS


def test_updates_run_during_env_steps_on_the_main_thread():
    model = make_model(learning_starts=30)
    main = threading.current_thread()
    steps, updates = [], []  # (start, end, thread)
    env_step_wait = model.env.step_wait

    def slow_step_wait():
        start = time.perf_counter()
        time.sleep(0.05)  # long enough that an overlapping update starts before it ends
        result = env_step_wait()
        steps.append((start, time.perf_counter(), threading.current_thread()))
        return result

    model.env.step_wait = slow_step_wait
    update = model.update

    def timed_update(batch):
        start = time.perf_counter()
        update(batch)
        updates.append((start, time.perf_counter(), threading.current_thread()))

    model.update = timed_update
    model.learn(60)
    assert all(thread is not main for _, _, thread in steps)
    assert all(thread is main for _, _, thread in updates)
    assert len(updates) == 60 // TASKS - 30 // TASKS
    # every update but the last overlaps an env step; the last one runs at the end of learn
    for start, end, _ in updates[:-1]:
        assert any(s < end and start < e for s, e, _ in steps)
    assert updates[-1][0] > steps[-1][1]
