"""mtrl-recon: rank a run's layers by conflict and write a config with them task-specific."""

import itertools

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from mtrl.agents import MTSAC
from mtrl.cli import recon
from mtrl.cli.settings import train_settings
from mtrl.conflict import ConflictRecorder
from mtrl.runs import CONFIG, checkpoint_path
from tests.agents.point_tasks import point_tasks
from tests.cli.conftest import train_config

THRESHOLD = -0.1  # S: a pair counts where its cosine on the layer is below it


@pytest.fixture(scope="module")
def conflicted_run(tmp_path_factory):
    """A run directory with a checkpoint, and the per-layer Gram matrices of every update
    that the run counted, as each step handed them over."""
    run_dir = tmp_path_factory.mktemp("run")
    OmegaConf.save(train_config(), run_dir / CONFIG, resolve=True)
    steps = {"actor": [], "critic": []}
    add = ConflictRecorder.add

    def keep(recorder, result):
        steps[recorder.name].append((result.layer_grams.detach().clone(), bool(result.finite)))
        add(recorder, result)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ConflictRecorder, "add", keep)
        model = MTSAC(
            "MlpPolicy",
            point_tasks(3),
            learning_starts=60,
            batch_size=24,
            policy_kwargs={"net_arch": [32, 32, 32]},
            recon_threshold=THRESHOLD,
            seed=0,
            device="cpu",
        )
        model.learn(300)
    model.save(checkpoint_path(run_dir, model.num_timesteps))
    return run_dir, steps


def s_conflict_scores(steps) -> dict[tuple[str, int], float]:
    """Recon's S-conflict score of each layer, from the Gram matrices of the updates taken:
    the fraction of (update, task pair) entries whose cosine on the layer is below S."""
    scores = {}
    for network, grams in steps.items():
        grams = np.stack([g.double().numpy() for g, finite in grams if finite])  # [T, L, K, K]
        updates, layers, tasks, _ = grams.shape
        for layer in range(layers):
            below = 0
            for gram in grams[:, layer]:
                for i, j in itertools.combinations(range(tasks), 2):
                    below += gram[i, j] / np.sqrt(gram[i, i] * gram[j, j]) < THRESHOLD
            scores[network, layer] = below / (updates * tasks * (tasks - 1) / 2)
    return scores


def test_ranks_layers_by_their_conflict_scores(conflicted_run, capsys):
    run_dir, steps = conflicted_run
    expected = s_conflict_scores(steps)
    assert len(expected) == 8  # four layers in each network, all shared
    assert len(set(expected.values())) >= 6  # the ranking is not decided by ties
    assert min(expected.values()) > 0 and max(expected.values()) < 1
    scores = recon.layer_scores(run_dir)
    assert scores == pytest.approx(expected, abs=1e-12)

    recon.main([str(run_dir), "top_k=3"])
    printed = capsys.readouterr().out
    assert printed.count("<- task-specific") == 3
    top = sorted(expected, key=expected.get, reverse=True)[:3]
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
