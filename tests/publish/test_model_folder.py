"""One model-folder writer and one Hub-commit helper (cloome_hf.publish.model_folder / .commit): a trained model
gets the same files and card from `cloome train` and `cloome push`; nothing else commits to the Hub."""

import ast
import json
import os
import re
from pathlib import Path

import cloome_hf


def _without_metrics(card: str) -> str:
    return re.sub(r"\n## Validation metrics\n.*?(?=\n## )", "", card, flags=re.S)


def _without_dtype(config):
    if isinstance(config, dict):
        return {k: _without_dtype(v) for k, v in config.items() if k != "dtype"}
    return config


def test_push_writes_the_card_and_config_train_wrote(finished_tiny_run, tmp_path):
    from cloome_hf.publish.hub import write_model_repo

    run = Path(finished_tiny_run)
    out = tmp_path / run.name  # the same folder name: train names the card's model after its folder
    files = write_model_repo(run, out, model_id=run.name)
    # the same card, but for the validation metrics of the run, which only train knows
    assert "## Validation metrics" in (run / "README.md").read_text()
    assert (out / "README.md").read_text() == _without_metrics((run / "README.md").read_text())
    assert json.loads((out / "training_config.json").read_text()) == json.loads((run / "training_config.json").read_text())
    for name in set(files) - {"README.md", "config.json"}:  # every other file of the layout is the one train wrote
        assert (out / name).read_bytes() == (run / name).read_bytes(), name
    # config.json too, but for the dtype from_pretrained records on loading (a transformers convention)
    assert _without_dtype(json.loads((out / "config.json").read_text())) == \
        _without_dtype(json.loads((run / "config.json").read_text()))
    # the card's table is the flat one (a recipe value, an argument), not the raw training_config.json
    card = (out / "README.md").read_text()
    assert "| `learning_rate` |" in card and "| `dataset` | synthetic |" in card
    assert "| `arguments` |" not in card and "| `runtime` |" not in card


def test_a_folder_of_an_earlier_layout_loses_its_shards_and_training_config(finished_tiny_run, tmp_path):
    from cloome_hf.processing_cloome import load_model_and_processor
    from cloome_hf.publish.model_folder import write_model_folder

    out = tmp_path / "repo"
    out.mkdir()
    for stale in ("pytorch_model.bin", "model-00001-of-00002.safetensors", "training_config.json"):
        (out / stale).write_text("from an earlier model")
    (out / "notes.txt").write_text("not the writer's")
    model, processor = load_model_and_processor(finished_tiny_run)
    written = write_model_folder(out, model, processor, model_id="repo")
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json"} <= set(written)
    assert "training_config.json" not in written  # none given: the stale one must not be published with it
    assert sorted(os.listdir(out)) == sorted(written + ["notes.txt"])


def _calls(tree: ast.AST) -> set[str]:
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_only_the_commit_helper_talks_to_the_hub_api():
    hub_calls = {"HfApi", "create_commit", "create_repo", "upload_folder", "upload_file"}
    package = Path(cloome_hf.__file__).parent
    callers = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if _calls(ast.parse(p.read_text(encoding="utf-8"))) & hub_calls}
    assert callers == {"publish/commit.py"}


def test_only_the_model_folder_writer_saves_a_model_folder():
    package = Path(cloome_hf.__file__).parent
    savers = set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            # (super().save_pretrained is the processor's own; a tokenizer saved inside a processor is not a model)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "save_pretrained" and \
                    not (isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", "") == "super") \
                    and getattr(node.func.value, "attr", None) != "tokenizer":
                savers.add(str(path.relative_to(package)))
    # testing.py writes a stand-in for a downloaded third-party language model (tokenizer + RobertaModel), not a
    # CLOOME model folder
    assert savers == {"publish/model_folder.py", "testing.py"}
