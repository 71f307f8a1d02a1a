"""The README's Python example runs as written (with a shorter budget)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_trains_saves_and_loads(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if "MTSAC(" in block)
    example = example.replace('BenchmarkSpec("mt10")', 'BenchmarkSpec("mt1", task="reach-v3")')
    example = example.replace("total_timesteps=100_000", "total_timesteps=300")
    shorter = r"\1, learning_starts=200, batch_size=32)\n"
    example = re.sub(r"(model = MTSAC\(.*)\)\n", shorter, example)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["model"].num_timesteps == 300
    assert (tmp_path / "gradops.pt").is_file()
