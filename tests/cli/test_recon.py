"""mtrl-recon: rank a run's layers by conflict and write a config with them task-specific."""

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from mtrl.agents import MTSAC
from mtrl.cli import recon
from mtrl.cli.settings import train_settings
from mtrl.runs import CONFIG, checkpoint_path
from tests.agents.point_tasks import point_tasks
from tests.cli.conftest import train_config


@pytest.fixture(scope="module")
def conflicted_run(tmp_path_factory):
    """A run directory whose checkpoint holds per-layer conflict counts of three tasks."""
    run_dir = tmp_path_factory.mktemp("run")
    OmegaConf.save(train_config(), run_dir / CONFIG, resolve=True)
    model = MTSAC(
        "MlpPolicy",
        point_tasks(3),
        learning_starts=60,
        batch_size=24,
        policy_kwargs={"net_arch": [32, 32, 32]},
        seed=0,
        device="cpu",
    )
    model.learn(300)
    # these point tasks agree on every layer, so give the counts known, distinct values
    for network, counts in (("actor", [5, 40, 0, 12]), ("critic", [30, 2, 60, 7])):
        recorder = getattr(model, f"{network}_conflicts")
        recorder.flush()
        recorder.layers.counts = torch.tensor(counts)
    model.save(checkpoint_path(run_dir, model.num_timesteps))
    return run_dir, model


def test_ranks_layers_by_their_conflict_scores(conflicted_run, capsys):
    run_dir, model = conflicted_run
    scores = recon.layer_scores(run_dir)
    assert len(scores) == 8  # four layers in each network, all shared
    for network in ("actor", "critic"):
        expected = getattr(model, f"{network}_conflicts").layers.scores()
        for layer, value in expected.items():
            assert scores[network, int(layer.removeprefix("layer"))] == pytest.approx(value)
    assert max(scores, key=scores.get) == ("critic", 2)

    recon.main([str(run_dir), "top_k=3"])
    printed = capsys.readouterr().out
    assert printed.count("<- task-specific") == 3
    top = sorted(scores, key=scores.get, reverse=True)[:3]
    written = yaml.safe_load((run_dir / "recon" / "experiment" / "recon.yaml").read_text())
    for network in ("actor", "critic"):
        assert written["agent"][f"{network}_task_layers"] == sorted(
            i for n, i in top if n == network
        )


def test_the_written_experiment_trains_that_network(conflicted_run):
    run_dir, _ = conflicted_run
    recon.main([str(run_dir), "top_k=2"])
    search_path = f"hydra.searchpath=[file://{run_dir / 'recon'}]"
    settings = train_settings(train_config(search_path, "experiment=recon", "method=pcgrad"))
    written = yaml.safe_load((run_dir / "recon" / "experiment" / "recon.yaml").read_text())
    policy = settings.agent_kwargs["policy_kwargs"]
    assert policy["actor_task_layers"] == written["agent"]["actor_task_layers"]
    assert policy["critic_task_layers"] == written["agent"]["critic_task_layers"]
    assert len(policy["actor_task_layers"]) + len(policy["critic_task_layers"]) == 2
    assert settings.method == "pcgrad"


@pytest.mark.parametrize(
    ("options", "message"), [(["top_k=99"], "top_k must be between"), (["k=2"], "valid: top_k")]
)
def test_bad_options_are_refused(conflicted_run, options, message, capsys):
    run_dir, _ = conflicted_run
    with pytest.raises(SystemExit):
        recon.main([str(run_dir), *options])
    assert message in capsys.readouterr().err
