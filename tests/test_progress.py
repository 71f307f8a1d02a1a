"""The progress bar's time left comes from the update phase alone, and names the warm-up."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mtrl.callbacks import ProgressBarCallback, TrainingEta, format_duration

TASKS = 10
WARMUP = 4_000 * TASKS  # env steps of random actions, as `make train` has them
TOTAL = 2_000_000 * TASKS
WARMUP_RATE, TRAINING_RATE = 750.0, 130.0  # env steps/s on a 2-core machine


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_time_is_promised_during_the_warm_up():
    clock = FakeClock()
    eta = TrainingEta(TOTAL, WARMUP, clock)
    for steps in range(0, WARMUP, 1_000):
        clock.now = steps / WARMUP_RATE
        assert eta.warming_up(steps)
        assert eta.seconds_left(steps) is None


def test_the_time_left_follows_the_update_phase_rate_not_the_warm_up_one():
    clock = FakeClock()
    eta = TrainingEta(TOTAL, WARMUP, clock)
    for steps in range(0, WARMUP, TASKS):
        clock.now = steps / WARMUP_RATE
        eta.seconds_left(steps)
    start = clock.now
    assert eta.seconds_left(WARMUP) is None  # the first update: no rate yet
    for steps in range(WARMUP + TASKS, WARMUP + 50_000, TASKS):
        clock.now = start + (steps - WARMUP) / TRAINING_RATE
        left = eta.seconds_left(steps)
    assert left == pytest.approx((TOTAL - steps) / TRAINING_RATE, rel=1e-9)
    # The whole run's average rate would have promised far less.
    assert left > 1.2 * (TOTAL - steps) * clock.now / steps


def test_a_resumed_run_measures_its_own_rate():
    clock = FakeClock()
    resumed_at = 1_000_000
    eta = TrainingEta(TOTAL, WARMUP, clock)
    clock.now = 100.0
    assert eta.seconds_left(resumed_at) is None
    clock.now = 200.0
    assert eta.seconds_left(resumed_at + 13_000) == pytest.approx(
        (TOTAL - resumed_at - 13_000) / 130.0
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (12, "12 s"),
        (250, "4 min 10 s"),
        (7_500, "2 h 05 min"),
        (155_000, "43 h 03 min"),
    ],
)
def test_durations_read_as_hours_minutes_and_seconds(seconds, text):
    assert format_duration(seconds) == text


def fake_model(steps: int) -> SimpleNamespace:
    env = SimpleNamespace(num_envs=TASKS)
    return SimpleNamespace(
        num_timesteps=steps,
        learning_starts=WARMUP,
        run_state={},
        logger=None,
        get_env=lambda: env,
    )


def test_the_bar_labels_the_warm_up_then_shows_the_training_time_left():
    clock = FakeClock()
    model = fake_model(0)
    bar = ProgressBarCallback(TOTAL, clock=clock)
    bar.init_callback(model)
    bar.on_training_start({}, {})
    for steps in range(TASKS, WARMUP + 20_000, TASKS):
        model.num_timesteps = steps
        clock.now += TASKS / (WARMUP_RATE if steps <= WARMUP else TRAINING_RATE)
        if steps == WARMUP // 2:
            assert bar.bar.desc.startswith("warm-up, random actions to 40,000 steps")
            assert "time left known once training starts" in str(bar.bar)
        bar.on_step()
    model.run_state["last_success"] = 0.25
    model.num_timesteps += TASKS
    clock.now += TASKS / TRAINING_RATE
    bar.on_step()
    shown = str(bar.bar)
    hours = (TOTAL - model.num_timesteps) / TRAINING_RATE / 3600
    assert shown.startswith("training:")
    assert f"{int(hours)} h" in shown and "left" in shown and "success=0.25" in shown
    bar.on_training_end()
