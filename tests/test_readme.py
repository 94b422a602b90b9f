"""README.md: the set-up commands are the ones CI runs, and the model examples run as written."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(name: str) -> str:
    return README.split(f"<!-- BEGIN {name} -->", 1)[1].split(f"<!-- END {name} -->", 1)[0]


def test_two_set_up_commands_and_ci_runs_the_test_command():
    setup = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```bash\n")[1:]]
    assert commands == ['pip install . && cloome train --output_dir runs/demo',
                        'pip install -e ".[test]" && HF_HUB_OFFLINE=1 python -m pytest tests -q']
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]


def test_model_section_examples_run(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    first, migration, trainer = [b.split("```", 1)[0] for b in _section("model").split("```python\n")[1:]]
    namespace: dict = {}
    exec(compile(first, "README-model", "exec"), namespace)
    assert (tmp_path / "my-cloome" / "model.safetensors").is_file()
    namespace["pixel_values"] = namespace["images"]
    exec(compile(migration, "README-migration", "exec"), namespace)
    assert namespace["features"].shape == (4, 512)
    before = namespace["model"].state_dict()["visual_projection.weight"].clone()
    exec(compile(trainer, "README-trainer", "exec"), namespace)
    assert not namespace["model"].state_dict()["visual_projection.weight"].equal(before)  # it trained
