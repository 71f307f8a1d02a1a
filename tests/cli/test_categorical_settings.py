"""The categorical critic's settings from the command line: bad values refused by name, before
anything is built."""

from __future__ import annotations

import subprocess
import sys

import pytest


def train_command(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtrl.cli.train", "progress_bar=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["agent.critic_loss=categorical", "agent.max_q_value=100"],
            "agent.critic_loss=categorical bounds the values by its support "
            "(agent.categorical.v_max): agent.max_q_value must be null",
        ),
        (
            ["agent.critic_loss=quantile"],
            "agent.critic_loss='quantile' is not valid: it must be one of mse, categorical",
        ),
        (
            ["agent.critic_loss=categorical", "agent.categorical.atoms=1"],
            "agent.categorical.atoms=1 is not valid: it must be an integer >= 2",
        ),
        (
            ["agent.critic_loss=categorical", "agent.categorical.v_max=0"],
            "agent.categorical.v_max=0.0 is not valid: it must be a number > 0",
        ),
    ],
    ids=["with-max-q-value", "loss", "atoms", "v-max"],
)
def test_a_bad_categorical_setting_is_refused_by_name(overrides, expected, tmp_path):
    result = train_command(*overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not [*tmp_path.rglob("config.yaml"), *tmp_path.rglob("protocol.json")]
