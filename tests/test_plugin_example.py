"""examples/plugin-method, installed as a user installs a package beside mtrl: its method and its
network train a smoke MT10 run, the checkpoint is evaluated, and mtrl-compare puts the run beside
a GradOPS run, by name, with the package's name and version.

It is installed into a throwaway virtual environment, so that its entry points never reach the
other tests. The environment sees the project's packages through a .pth file that adds the
project's site-packages (``venv --system-site-packages`` would expose the base interpreter's
instead), and pip installs offline: ``--no-index --no-build-isolation``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mtrl.aggregators import available

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin-method"
PACKAGE = "mtrl-plugin-example 0.1.0"
# A few updates and one evaluation of one short episode per task: the environments' start-up is
# most of the time.
SMOKE = [
    "experiment=smoke",
    "total_steps=20",
    "benchmark.episode_length=10",
    "benchmark.vector_strategy=sync",
    "agent.warmup_steps=10",
    "agent.net_arch=[16]",
    "agent.batch_size_per_task=4",
    "agent.buffer_size_per_task=100",
    "eval.every=20",
    "eval.episodes=1",
    "eval.background=false",
    "checkpoint.every=20",
    "progress_bar=false",
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A virtual environment holding the example package, beside the project's packages."""
    root = tmp_path_factory.mktemp("plugin")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # addsitedir also reads the .pth files there, such as that of mtrl's editable install
    project = sysconfig.get_paths()["purelib"]
    (Path(site) / "project.pth").write_text(f"import site; site.addsitedir({project!r})\n")
    # installed from a copy: the build writes into the source folder
    source = shutil.copytree(EXAMPLE, root / "source")
    install = [python, "-m", "pip", "install", "--no-index", "--no-build-isolation", "-q"]
    subprocess.run([*install, source], check=True, capture_output=True, text=True)
    return python


def run(python: Path, module: str, *args: str, cwd: Path, ok: bool = True):
    result = subprocess.run(
        [python, "-m", module, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_a_plugin_package_trains_is_evaluated_and_compared(venv, tmp_path):
    plugin_run, gradops_run = tmp_path / "runs" / "plugin", tmp_path / "runs" / "gradops"
    # the GradOPS run trains meanwhile: the environments' start-up takes most of each run
    gradops = ["method=gradops", f"hydra.run.dir={gradops_run}"]
    baseline = subprocess.Popen(
        [venv, "-m", "mtrl.cli.train", *SMOKE, *gradops],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        own_tests = venv.parents[2] / "source" / "tests"
        result = run(venv, "pytest", own_tests, "-q", "-p", "no:cacheprovider", cwd=tmp_path)
        assert "8 passed" in result.stdout, result.stdout  # its check_method and check_network too

        plugin = ["method=cosine-softmax", "method.temperature=0.25", "network=gated-mlp"]
        plugin += ["network.gate_std=0.2", f"hydra.run.dir={plugin_run}"]
        run(venv, "mtrl.cli.train", *SMOKE, *plugin, cwd=tmp_path)
        protocol = json.loads((plugin_run / "protocol.json").read_text())
        assert protocol["method"] == {"name": "cosine-softmax", "temperature": 0.25}
        assert protocol["agent"]["policy_kwargs"]["network"] == "gated-mlp"
        assert protocol["agent"]["policy_kwargs"]["network_options"] == {"gate_std": 0.2}
        source = {"distribution": "mtrl-plugin-example", "version": "0.1.0"}
        assert protocol["provided_by"] == {"method": source, "network": source}

        evaluation = [f"checkpoint={plugin_run}", "episodes=1", "progress_bar=false"]
        result = run(venv, "mtrl.cli.evaluate", *evaluation, cwd=tmp_path)
        (report,) = (plugin_run / "eval").glob("*.json")
        assert len(json.loads(report.read_text())["success"]) == 10, result.stdout

        output, _ = baseline.communicate(timeout=600)
        assert baseline.returncode == 0, output
        comparison = [plugin_run, gradops_run, "--out", tmp_path / "report", "--reps", "100"]
        result = run(venv, "mtrl.cli.compare", *comparison, cwd=tmp_path)
        rows = {line.split()[2]: line for line in result.stdout.splitlines()[1:3]}
        assert set(rows) == {"cosine-softmax", "gradops"}
        # the two runs' networks differ, so each row names its network too
        assert f"cosine-softmax · gated-mlp ({PACKAGE})" in rows["cosine-softmax"]
        assert "gradops · mlp" in rows["gradops"]
        report = (tmp_path / "report" / "report.md").read_text()
        assert f"cosine-softmax · gated-mlp ({PACKAGE})" in report
    finally:
        baseline.kill()  # nothing, once it has finished
        baseline.communicate()

    # nothing of it reached this process
    assert "cosine-softmax" not in available()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method=cosine-softmax", "method.temperature=-1"],
            f"method.temperature=-1.0 refused by the method 'cosine-softmax' of {PACKAGE}: "
            "temperature must be a positive number, got -1.0",
        ),
        (
            ["network=gated-mlp", "network.gate_std=0"],
            f"network.gate_std=0.0 refused by the network 'gated-mlp' of {PACKAGE}: "
            "gate_std must be a positive number, got 0.0",
        ),
    ],
    ids=["method", "network"],
)
def test_a_plugin_value_out_of_range_is_refused_naming_key_value_and_package(
    venv, tmp_path, overrides, message
):
    result = run(venv, "mtrl.cli.train", *overrides, cwd=tmp_path, ok=False)
    assert result.returncode == 2
    assert f"mtrl-train: {message}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_plugin_value_of_the_wrong_type_is_refused_by_its_key(venv, tmp_path):
    overrides = ["method=cosine-softmax", "method.temperature=abc"]
    result = run(venv, "mtrl.cli.train", *overrides, cwd=tmp_path, ok=False)
    assert result.returncode != 0
    assert "full_key: method.temperature" in result.stderr
    assert "Traceback" not in result.stderr
