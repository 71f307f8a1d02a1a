"""The distribution maps the top-level agents/ and envs/ folders into the mtrl namespace."""

import subprocess
import sys
import zipfile
from pathlib import Path

import mtrl.agents
import mtrl.envs

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_imports_the_top_level_folders():
    assert Path(mtrl.agents.__file__).parent == ROOT / "agents"
    assert Path(mtrl.envs.__file__).parent == ROOT / "envs"


def test_wheel_installs_agents_and_envs_under_mtrl(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mtrl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mtrl/agents/__init__.py" in names and "mtrl/envs/__init__.py" in names
    assert not any(name.startswith(("agents/", "envs/")) for name in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = "import mtrl.agents, mtrl.envs, mtrl.aggregators; print(mtrl.agents.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().startswith(str(target))
