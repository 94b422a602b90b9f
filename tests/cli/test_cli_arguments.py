"""One argument style (cloome_hf.cli.arguments): every command parses dataclasses through HfArgumentParser, the
shared groups are defined once, one name per idea, old spellings are hidden aliases of the new names, and "H [W]"
is read by one function."""

import ast
from pathlib import Path

import pytest

import cloome_hf
from cloome_hf import cli
from cloome_hf.cli import convert, embed, evaluate, prepare, push, serve, space
from cloome_hf.cli.arguments import image_size_pair, parse_command, synthetic_options

PACKAGE = Path(cloome_hf.__file__).parent


def _train(argv):
    from cloome_hf.train.params import parse_args

    return parse_args(argv)


# ------------------------------------------------------------------------------------------- old spellings
@pytest.mark.parametrize("parse, argv, name, value", [
    (lambda a: parse_command("push", push.ARGUMENTS, a), ["--model_dir", "m", "--repo_id", "me/x"], "model", "m"),
    (lambda a: parse_command("push", push.ARGUMENTS, a), ["--model_dir=m", "--repo_id", "me/x"], "model", "m"),
    (lambda a: parse_command("convert", convert.ARGUMENTS, a), ["--checkpoint_path", "c.pt", "--output_dir", "o",
                                                                 "--preset", "bioactivity"], "recipe", "bioactivity"),
    (prepare.parse_arguments, ["--layout", "tiff", "--output_dir", "o"], "kind", "tiff"),
    (embed.parse_arguments, ["--model", "m", "--output_dir", "o", "--max_samples", "8"], "max_sites", 8),
    (lambda a: vars(_train(a)[0]), ["--output_dir", "o", "--model_name_or_path", "m"], "model", "m"),
    (lambda a: vars(_train(a)[2]), ["--output_dir", "o", "--preset", "retrieval"], "recipe", "retrieval"),
    (serve.parse_arguments, ["--images", "store/"], "embeddings", "store/"),
    (space.parse_arguments, ["--images=me/store", "--output_dir", "o"], "embeddings", "me/store"),
])
def test_an_old_spelling_is_a_hidden_alias_of_the_new_name(parse, argv, name, value, capsys):
    args = parse(argv)
    assert (args[name] if isinstance(args, dict) else getattr(args, name)) == value
    old = argv[[a.startswith("--") and a.split("=")[0] not in ("--repo_id", "--output_dir", "--model",
                                                               "--checkpoint_path") for a in argv].index(True)]
    note = capsys.readouterr().err
    assert f"{old.split('=')[0]} is now --{name}" in note


def test_the_synthetic_command_takes_the_shared_names_and_its_old_ones(tmp_path, capsys):
    from cloome_hf.data.__main__ import main as data_main

    old = data_main(["synthetic", "--output_dir", str(tmp_path / "old"), "--num_molecules", "3", "--sites_per_molecule",
                     "1", "--num_plates", "1", "--image_size", "24", "32", "--layout", "bray_npz"])
    new = data_main(["synthetic", "--output_dir", str(tmp_path / "new"), "--synthetic_molecules", "3",
                     "--synthetic_sites_per_molecule", "1", "--synthetic_plates", "1", "--synthetic_image_size", "24",
                     "32", "--kind", "bray_npz"])
    index = lambda out: Path(out["index"]).read_text()  # noqa: E731
    assert index(old) == index(new) and len(index(new).splitlines()) == 4  # header + 3 molecules x 1 site
    assert "--num_molecules is now --synthetic_molecules" in capsys.readouterr().err


@pytest.mark.parametrize("module, old", [(push, "--model_dir"), (convert, "--preset"), (prepare, "--layout"),
                                         (embed, "--max_samples"), (serve, "--images"), (space, "--images")])
def test_old_spellings_stay_out_of_the_help(module, old, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    lines = capsys.readouterr().out.splitlines()  # (the description may name it as an old spelling)
    options = [line.strip() for line in lines if line.strip().startswith(("-", "[", "usage:"))]
    assert not any(f"[{old}" in line or line.startswith(old) or f", {old}" in line for line in options)


# ------------------------------------------------------------------------------------------- one name per idea
@pytest.mark.parametrize("command, flag", [
    ("train", "--model"), ("embed", "--model"), ("evaluate", "--model"), ("search", "--model"), ("push", "--model"),
    ("train", "--recipe"), ("convert", "--recipe"), ("prepare", "--kind"),
    ("train", "--synthetic_plates"), ("evaluate", "--synthetic_plates"), ("embed", "--max_sites"),
    ("evaluate", "--max_sites"), ("serve", "--model"), ("space", "--model"), ("search", "--embeddings"),
    ("serve", "--embeddings"), ("space", "--embeddings"), ("space", "--output_dir"),
])
def test_each_idea_has_one_flag_in_every_command(command, flag, capsys):
    with pytest.raises(SystemExit):
        cli.run([command, "--help"])
    assert f"  {flag} " in capsys.readouterr().out


def _dataclass_fields_by_module() -> dict[str, set[str]]:
    """module -> names of the fields its argument dataclasses (``@dataclass class ...Arguments``) declare."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Arguments") and \
                    any(getattr(d, "id", None) == "dataclass" for d in node.decorator_list):
                names = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
                out.setdefault(str(path.relative_to(PACKAGE)), set()).update(names)
    return out


@pytest.mark.parametrize("name", ["model", "revision", "dataset", "output_dir", "overwrite_output_dir",
                                  "synthetic_molecules", "synthetic_sites_per_molecule", "synthetic_image_size",
                                  "root", "compounds", "wells", "storage_options"])
def test_a_shared_argument_is_declared_once_in_the_arguments_package(name):
    declared = sorted(module for module, names in _dataclass_fields_by_module().items() if name in names)
    assert len(declared) == 1 and declared[0].startswith("cli/arguments/"), declared


def test_no_command_builds_its_own_argparse_parser():
    builders = set()
    for path in PACKAGE.rglob("*.py"):
        calls = {getattr(n.func, "attr", getattr(n.func, "id", None))
                 for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)}
        if calls & {"add_argument", "add_subparsers", "add_mutually_exclusive_group"}:
            builders.add(str(path.relative_to(PACKAGE)))
    assert builders == {"cli/__init__.py"}  # the dispatcher's list of commands; each command is dataclasses


# ----------------------------------------------------------------------------------------------- "H [W]"
@pytest.mark.parametrize("values, pair", [([64], (64, 64)), ([24, 32], (24, 32)), (48, (48, 48))])
def test_h_w_is_one_or_two_sizes(values, pair):
    assert image_size_pair(values) == pair


@pytest.mark.parametrize("values", [[1, 2, 3], [], [0], [-4, 8]])
def test_h_w_refuses_other_counts_and_non_positive_sizes(values):
    with pytest.raises(ValueError, match="--image_size takes H"):
        image_size_pair(values)


def test_train_and_evaluate_read_h_w_the_same_way():
    model_args, data_args, _, _ = _train(["--output_dir", "o", "--image_size", "32", "--synthetic_image_size", "24",
                                          "40"])
    assert data_args.image_size == [32, 32] and data_args.synthetic_image_size == [24, 40]
    args = evaluate.parse_arguments(["--model", "m", "--output_dir", "o", "--synthetic_image_size", "24", "40"])
    assert synthetic_options(args, 0)["image_size"] == synthetic_options(data_args, 0)["image_size"] == (24, 40)


def test_train_keeps_its_demo_sized_synthetic_defaults_and_evaluate_the_generators():
    from cloome_hf.data.synthetic import make_synthetic_dataset
    import inspect

    _, data_args, _, _ = _train(["--output_dir", "o"])
    assert (data_args.dataset, data_args.synthetic_molecules, data_args.synthetic_sites_per_molecule) == \
        ("synthetic", 1200, 2)
    args = evaluate.parse_arguments(["--model", "m", "--output_dir", "o"])
    defaults = {k: p.default for k, p in inspect.signature(make_synthetic_dataset).parameters.items()}
    assert synthetic_options(args, 0) == {**{k: defaults[k] for k in ("num_molecules", "sites_per_molecule",
                                                                       "num_plates")},
                                          "image_size": (defaults["image_size"],) * 2, "seed": 0}


# --------------------------------------------------------------------------------------- the error contract
@pytest.mark.parametrize("argv, message", [
    (["embed", "--bogus", "1"], "cloome embed: error: unrecognized arguments: --bogus 1"),
    (["evaluate", "--dataset", "synthetic"], "cloome evaluate: error: the following arguments are required: "
                                             "--model, --output_dir"),
    (["search", "--embeddings", "e", "--index", "i"], "cloome search: error: give one of --embeddings and --index, "
                                                      "not both (--embeddings --index)"),
    (["push", "--repo_id", "me/x"], "cloome push: error: give --model and/or --embeddings"),
    (["prepare", "--kind", "zip", "--output_dir", "o"], "cloome prepare: error: argument --kind: invalid choice"),
])
def test_argument_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(message) and len(lines) == 2 and lines[1].startswith(f"cloome {argv[0]}: hint: ")
