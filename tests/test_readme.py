"""README.md: every code block runs as written from a folder outside the clone (the package imported from the
install / PYTHONPATH), with the tiny size settings each test names added where a block trains or evaluates, and
local equivalents, named in each test's docstring, where a block needs the network (Hub, S3) or many machines."""

import csv
import re
import io
import json
import os

import numpy as np
import pytest
import tifffile
from readme_blocks import README, ROOT, blocks, cloome_argv, command_lines, run_cloome, section

_section = section


def test_two_set_up_commands_and_ci_runs_the_test_command():
    """The set-up blocks: their ``pip install .`` is tests/test_wheel.py (the built wheel installed into a fresh
    environment, every command run from outside the checkout), their ``cloome train --output_dir runs/demo`` the
    shared tiny run (conftest, tiny flags added), the test command the one CI runs."""
    setup = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```bash\n")[1:]]
    assert commands == ['pip install . && cloome train --output_dir runs/demo',
                        'pip install -e ".[test]" && HF_HUB_OFFLINE=1 python -m pytest tests -q -n 2 --dist loadscope']
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1]
    # issue 23, finding 7: a CPU-only machine is told how to get the CPU build of torch (not runnable offline)
    assert "`pip install torch --index-url https://download.pytorch.org/whl/cpu`, then\n`pip install .`" in setup


def test_embedding_shapes_per_recipe_are_the_recipes_own():
    """Issue 23, finding 6: the README's per-recipe embedding sizes are those the recipes define."""
    from cloome_hf.recipes import get_recipe

    text = section("search").split("**Embedding shapes per recipe**", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"`demo` \(the default of\s+`cloome train`, so `runs/demo`\) 64;", text), text
    assert get_recipe("demo").model["projection_dim"] == 64
    assert re.search(r"`retrieval`, `zero-shot`, `bioactivity` and the converted published\s+weights 512", text)
    assert {get_recipe(n).model["projection_dim"] for n in ("retrieval", "zero-shot", "bioactivity")} == {512}


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


def test_processing_example_runs_from_outside_the_clone(tmp_path, monkeypatch, one_thread):
    from cloome_hf import CloomeConfig, CloomeModel

    monkeypatch.chdir(tmp_path)
    block = _section("processing").split("```python\n", 1)[1].split("```", 1)[0]
    vision = {"layers": [1, 1, 1, 1], "base_width": 8, "head_pool_size": 2, "image_size": [520, 696]}
    namespace: dict = {"model": CloomeModel(CloomeConfig(vision_config=vision, projection_dim=16)).eval()}
    exec(compile(block, "README-processing", "exec"), namespace)
    batch = namespace["batch"]
    assert batch["pixel_values"].shape == (1, 5, 520, 696) and batch["fingerprints"].shape == (1, 1024)
    assert batch["fingerprints"].sum() > 0  # aspirin sets bits
    assert namespace["outputs"].image_embeds.shape == (1, 16)


# The model settings added to the README's `cloome train` line so that the recipe runs in seconds on a CPU.
TINY_OWN_DATA_TRAIN = ["--base_width", "8", "--molecule_hidden_size", "32", "--projection_dim", "16",
                       "--fingerprint_size", "128", "--per_device_train_batch_size", "4", "--vision_layers", "1", "1",
                       "1", "1", "--max_steps", "2", "--save_steps", "1", "--eval_steps", "100",
                       "--save_total_limit", "0", "--image_size", "64"]


def _own_data_index_and_commands():
    section = _section("own-data")
    table = section.split("```text\n", 1)[1].split("```", 1)[0]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    return list(csv.DictReader(io.StringIO(table))), commands


def test_bring_your_own_data_recipe_runs_as_written_from_outside_the_clone(tmp_path):
    rows, commands = _own_data_index_and_commands()
    assert [c.split()[:2] for c in commands] == [["cloome", "prepare"], ["cloome", "train"], ["cloome", "evaluate"]]
    assert len(rows) == 4  # the README's example: a header and four sites
    # The README's four sites plus a second plate named the same way, so that there are molecules to hold out.
    smiles = ["CCO", "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "c1ccccc1O",
              "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CN1CCC[C@H]1c1cccnc1", "OC(=O)CCc1ccccc1", "Nc1ccccc1"]
    template = rows[0]
    for j, smi in enumerate(smiles):
        for site in (1, 2):
            well = f"B{j + 1:02d}"
            rows.append({k: v.replace("P1", "P2").replace("A01", well).replace("_s1_", f"_s{site}_")
                         for k, v in template.items()} | {"SAMPLE_KEY": f"P2-{well}-{site}", "SITE": str(site),
                                                          "SMILES": smi})
    work = tmp_path / "elsewhere"  # not the clone: nothing may be read from tests/ or the checkout's folders
    images = work / "images"
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        for k, column in enumerate(c for c in row if c.startswith("IMG_")):
            (images / row[column]).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(images / row[column], rng.gamma(2.0, 300.0 + 20 * i + 40 * k, (72, 72)).astype(np.uint16) + 1)
    with open(work / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    outputs = []
    for command in commands:
        argv = cloome_argv(command)
        outputs.append(run_cloome(argv + TINY_OWN_DATA_TRAIN if argv[0] == "train" else argv, cwd=work))

    report = json.loads((work / "my_sites" / "prepare_report.json").read_text())
    assert report["num_written"] == len(rows) == 20
    assert (work / "runs" / "mine" / "model.safetensors").is_file()
    results = json.loads((work / "runs" / "mine" / "eval" / "results.json").read_text())
    # One retrieval pair per molecule: the README's CCO and aspirin reappear on plate P2, its CS(C)=O does not.
    assert results["tasks"]["retrieval"]["image_to_molecule"]["top1"]["n"] == len(smiles) + 1
    assert (work / "runs" / "mine" / "eval" / "report.md").is_file()
    assert "EVALUATED ON THE TRAINING DATA" in outputs[2]


def test_the_readme_index_schema_is_the_one_prepare_help_documents():
    """The README's example index header is the TIFF schema of ``cloome prepare --help``'s epilog (that --help
    prints the epilog, named ``cloome prepare``, is tested in tests/data/test_prepare_inferred_index.py)."""
    from cloome_hf.data.schema_docs import PREPARE_EPILOG

    rows, _ = _own_data_index_and_commands()
    assert ",".join(rows[0]) in PREPARE_EPILOG.split("\n  tiff ", 1)[1]


# ---------------------------------------------------------------------------------------------------------------
# Every other block, run from a working folder outside the clone (``cwd`` = a temporary folder; the package comes
# from the install / PYTHONPATH). Shell lines run in this process through ``cloome_hf.cli.main``, the entry point
# of the ``cloome`` console script (which tests/test_wheel.py and tests/models/test_runtime.py start as a process).
# ---------------------------------------------------------------------------------------------------------------
# The model settings added to the README's training lines so that each runs in seconds on a CPU.
TINY_MODEL = ["--vision_layers", "1", "1", "1", "1", "--base_width", "8", "--molecule_hidden_size", "32",
              "--projection_dim", "16", "--fingerprint_size", "128", "--image_size", "64", "--head_pool_size", "2",
              "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2"]
# Where the README's inputs are the user's downloads, the test writes local equivalents under the same names:
DATA = ROOT / "tests" / "fixtures"


def _user_downloads(work):
    """The annotation, activity and CellProfiler files the README's Bray evaluation names, from the subsets of the
    real files in tests/fixtures (PROVENANCE.md there)."""
    import gzip
    import shutil

    pd = __import__("pandas")
    pd.read_csv(DATA / "compound_moa_annotations_subset.csv").to_csv(work / "compound_moa_annotations.csv.gz",
                                                                     index=False)
    with gzip.open(DATA / "activity_label_matrix.mtx.gz", "rb") as src, open(work / "label-matrix.mtx", "wb") as dst:
        shutil.copyfileobj(src, dst)
    pd.read_csv(DATA / "activity_row_compound_index.csv.gz").to_csv(work / "row-compound-index.csv", index=False)
    shutil.copy(DATA / "activity_column_assay_index.csv", work / "column-assay-index.csv")
    shutil.copy(DATA / "cellprofiler_profiles_SQ00015054_subset.csv.gz", work / "cellprofiler_profiles.csv.gz")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, finished_tiny_run):
    """A user's folder: ``runs/demo`` is the README's main job (``cloome train --output_dir runs/demo``) as the
    shared tiny run trained it (conftest.TINY_TRAIN_ARGS added), ``data/bray`` a prepared dataset (train and test
    splits) of synthetic sites written in the Bray npz layout, and the evaluation's downloads."""
    import shutil

    from cloome_hf.data import write_synthetic_layout

    work = tmp_path_factory.mktemp("readme") / "elsewhere"
    shutil.copytree(finished_tiny_run, work / "runs" / "demo")
    layout = write_synthetic_layout(work / "raw", "bray_npz", num_molecules=30, sites_per_molecule=2, num_plates=2,
                                    image_size=64)
    for split in ("train", "test"):
        run_cloome(["prepare", "--kind", "bray_npz", "--index", layout["index"], "--root", layout["root"],
                    "--output_dir", str(work / "data" / "bray"), "--split", split])
    _user_downloads(work)
    return work


def _site_npz(path, flip=False):
    """A Bray-style ``.npz`` site (array ``sample``, uint8 H x W x 5) made from the package's example site."""
    from cloome_hf import CloomeImageProcessor, example_site

    site = CloomeImageProcessor().load_uint8_site(example_site())
    np.savez(path, sample=(site[:, ::-1] if flip else site).transpose(1, 2, 0))


def _config(run):
    return json.loads((run / "training_config.json").read_text())


def test_training_blocks_run_from_outside_the_clone(workspace, monkeypatch, one_thread):
    """The training section's commands on ``data/bray`` with TINY_MODEL added (2 steps of a 1-block ResNet). The
    main job is ``runs/demo`` of the workspace (the shared tiny run, not trained again). ``accelerate launch`` lines
    run as the single process such a launch starts here (one CPU; real multi-process launches:
    tests/train/test_training_distributed.py). The multi-node block cannot run on one machine: accelerate's own parser
    checks its launcher flags, and its ``cloome`` command is the bioactivity line run here."""
    import yaml

    main_job, bioactivity, retrieval, from_file = command_lines(blocks(section("training"), "bash")[0])
    assert main_job == "cloome train --output_dir runs/demo"
    assert _config(workspace / "runs" / "demo")["arguments"]["output_dir"].endswith("run")  # the shared run
    monkeypatch.chdir(workspace)
    for command in (bioactivity, retrieval):
        run_cloome([*cloome_argv(command), *TINY_MODEL])
    bio, ret = _config(workspace / "runs" / "bio"), _config(workspace / "runs" / "ret")
    assert (bio["recipe"], ret["recipe"]) == ("bioactivity", "retrieval")
    assert json.loads((workspace / "runs" / "bio" / "config.json").read_text())["loss"] in ("cloob", "infoloob")
    assert ret["arguments"]["mixed_precision"] == "bf16"

    settings = {"output_dir": "runs/from_file", "dataset": "data/bray", "learning_rate": 0.5, "vision_layers": [1] * 4,
                "base_width": 8, "molecule_hidden_size": 32, "projection_dim": 16, "fingerprint_size": 128,
                "image_size": [64], "head_pool_size": 2, "per_device_train_batch_size": 8, "max_steps": 2}
    (workspace / "train.yaml").write_text(yaml.safe_dump(settings))
    run_cloome(cloome_argv(from_file))
    used = _config(workspace / "runs" / "from_file")["arguments"]
    assert used["learning_rate"] == 1e-4 and used["projection_dim"] == 16  # the command line wins over the file

    node0, = command_lines(blocks(section("training"), "bash")[1])
    inner = cloome_argv(node0)
    assert inner[inner.index("--output_dir") + 1] == "/shared/runs/bio"
    inner[inner.index("--output_dir") + 1] = "runs/bio"
    assert inner == cloome_argv(bioactivity)


# The size settings added to the README's evaluation lines: a small synthetic set, two C values, a small null, and
# the linear probe in this process (joblib's workers take 30 s to start on a busy 2-core machine; the parallel
# probe equals the serial one in tests/evaluation/test_evaluation_linear_probe.py).
TINY_SYNTHETIC = ["--synthetic_molecules", "30", "--synthetic_sites_per_molecule", "2", "--synthetic_plates", "2"]
TINY_TASKS = ["--linear_probe_C", "0.1", "1", "--map_null_size", "300", "--n_jobs", "1"]


@pytest.fixture(scope="module")
def evaluated(workspace):
    """The evaluation section's two ``cloome evaluate`` lines run in the workspace (DIR_OR_HUB_ID = runs/demo)."""
    synthetic, bray = command_lines(blocks(section("evaluation"), "bash")[0])
    here = os.getcwd()
    os.chdir(workspace)
    try:
        printed = run_cloome([*cloome_argv(synthetic), *TINY_SYNTHETIC])
        run_cloome([*cloome_argv(bray.replace("DIR_OR_HUB_ID", "runs/demo")), *TINY_TASKS])
    finally:
        os.chdir(here)
    return printed


def test_evaluation_lines_write_the_documented_figures_and_tables(workspace, evaluated):
    """The first line writes the two figures the README names and lists t-SNE by MoA as not drawn (no MoA in the
    synthetic data); the Bray line (tests/fixtures' subsets of the real downloads under the README's file names, on
    the test split of data/bray) runs every task it names, with the CellProfiler baseline."""
    demo = workspace / "runs" / "demo" / "eval"
    assert (demo / "tsne_molecule.png").is_file() and (demo / "retrieval_gallery.png").is_file()
    assert not (demo / "tsne_moa.png").exists()
    assert "t-SNE by MoA" in json.loads((demo / "results.json").read_text())["figures_not_drawn"]
    assert "not drawn: t-SNE by MoA" in evaluated
    results = json.loads((workspace / "eval" / "results.json").read_text())
    assert set(results["tasks"]) == {"retrieval", "zeroshot_molecule", "zeroshot_moa", "linear_probe", "map"}
    assert results["tasks"]["linear_probe"]["n_molecules_matched"] > 0
    assert "CellProfiler features" in results["baselines"]
    assert (workspace / "eval" / "tsne_moa.png").is_file()  # MoA annotations given: the MoA t-SNE is drawn


def test_evaluation_python_blocks_run(workspace, monkeypatch):
    """The functions on plain numpy embeddings, and the offline ``evaluate`` modules, on random unit vectors."""
    import re

    functions, modules = blocks(section("evaluation"), "python")
    monkeypatch.chdir(workspace)  # label-matrix.mtx and its index files are there
    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    image_embeds, molecule_embeds = unit(rng.normal(size=(40, 8))), unit(rng.normal(size=(40, 8)))
    namespace = {"image_embeds": image_embeds, "molecule_embeds": molecule_embeds, "img": image_embeds,
                 "mol": molecule_embeds, "moa": np.array(["a", "b"] * 20), "molecule_ids": np.arange(40) % 10,
                 "plates": np.arange(40) % 4}
    exec(compile(functions, "README-evaluation-functions", "exec"), namespace)
    assert set(namespace["res"]["image_to_molecule"]["top1"]) >= {"value", "ci_low", "ci_high", "k", "n"}
    assert namespace["labels"] is not None
    claimed = re.search(r"clopper_pearson\(31, 100\)\s+# \(([\d.]+), ([\d.]+)\)", functions).groups()
    assert namespace["clopper_pearson"](31, 100) == pytest.approx(tuple(map(float, claimed)), abs=1e-4)
    exec(compile(modules, "README-evaluation-modules", "exec"), namespace)
    scores = namespace["retrieval"].compute(image_embeds=image_embeds, molecule_embeds=molecule_embeds)
    assert all(np.isscalar(v) for v in scores.values()) and scores


def test_jump_evaluation_line_runs_on_synthetic_screening_plates(tmp_path, monkeypatch, finished_tiny_run):
    """The JUMP protocol line on synthetic screening plates saved as ``jump_parquet`` (a real cpg0016 plate with
    its DMSO controls is too large here), their MoA table as ``compound_moa_annotations.csv.gz`` and their
    intensity features as ``cellprofiler_profiles.csv.gz`` (DMSO wells named ``DMSO``, as in CellProfiler's LINCS
    tables); ``--map_null_size 300`` added."""
    import pandas as pd

    from cloome_hf.data.synthetic_plates import make_synthetic_plates, plan_synthetic_plates, plan_site_features

    jump, = [c for c in command_lines(blocks(section("evaluation"), "bash")[1]) if "jump_parquet" in c]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(finished_tiny_run, target_is_directory=True)  # read only
    options = dict(num_compounds=10, num_moas=2, replicates=2, controls_per_plate=6, num_batches=1, image_size=64,
                   seed=2)
    make_synthetic_plates(**options).save_to_disk("jump_parquet")
    plan = plan_synthetic_plates(**options)
    plan.annotations.rename(columns={"inchikey": "Metadata_InChIKey"}).to_csv("compound_moa_annotations.csv.gz",
                                                                               index=False)
    sites = plan.records
    features = pd.DataFrame(plan_site_features(plan)).add_prefix("feature_")
    pd.concat([pd.DataFrame({"Metadata_Plate": sites.plate, "Metadata_Well": sites.well,
                             "Metadata_broad_sample": np.where(sites.perturbation_type == "negcon", "DMSO", sites.name),
                             "Metadata_InChIKey14": sites.inchikey.str[:14]}), features], axis=1).to_csv(
        "cellprofiler_profiles.csv.gz", index=False)
    run_cloome([*cloome_argv(jump), "--map_null_size", "300"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results["tasks"]) == {"jump_activity", "jump_consistency"}
    assert results["tasks"]["jump_activity"]["fraction_retrieved"]["n"] == 10
    assert "CellProfiler features" in results["baselines"]
    assert (tmp_path / "eval" / "jump_activity.png").is_file() and (tmp_path / "eval" / "jump_consistency.png").is_file()



def test_search_section_embeds_searches_serves_and_publishes(workspace, evaluated, monkeypatch, one_thread):
    """Embed -> search (Python and the shell line in the text) -> pipelines -> push, in the workspace: ``data/sites``
    a synthetic dataset the package makes, ``library.csv`` its molecules and two others, ``site.npz``, ``a.npz``,
    ``b.npz`` Bray-style files of the package's example site, ``eval/results.json`` from the evaluation lines.
    ``cloome push`` runs with its ``--local_dir`` option only: the Hub is not reachable here (the Hub commit is
    tested against a local fake in tests/publish/test_hub.py)."""
    import pandas as pd

    from cloome_hf.data import make_synthetic_dataset

    text = section("search")
    embed_line, = command_lines(blocks(text, "bash")[0])
    push_line, = command_lines(blocks(text, "bash")[1])
    search_python, pipelines = blocks(text, "python")
    monkeypatch.chdir(workspace)
    sites = make_synthetic_dataset(num_molecules=12, sites_per_molecule=2, num_plates=2, image_size=64, seed=1)
    sites.save_to_disk("data/sites")
    library = sorted(set(sites["smiles"])) + ["CC(=O)Oc1ccccc1C(=O)O", "CCO"]
    pd.DataFrame({"smiles": library}).to_csv("library.csv", index=False)
    for name, flip in (("site.npz", False), ("a.npz", False), ("b.npz", True)):
        _site_npz(workspace / name, flip)

    run_cloome(cloome_argv(embed_line))  # with its optional --bf16 --embedding_dtype float16
    info = json.loads((workspace / "embeddings" / "embedding_info.json").read_text())
    assert info["embedding_dtype"] == "float16"

    namespace: dict = {}
    exec(compile(search_python, "README-search", "exec"), namespace)
    index = namespace["index"]
    hits = index.search_images(smiles=["CC(=O)Oc1ccccc1C(=O)O"], k=10)
    assert list(hits["rank"]) == list(range(10)) and hits["score"].is_monotonic_decreasing
    molecules = index.search_molecules(images=["site.npz"], k=10)
    assert set(molecules["smiles"]) <= set(library) and len(molecules) == 10
    assert (workspace / "index").is_dir()

    inline = re.search(r"From the shell: `(cloome search [^`]+)`", text).group(1)
    printed = run_cloome(cloome_argv(inline))
    assert len(pd.read_csv("hits.csv")) == 5 and "hits.csv" in printed

    exec(compile(pipelines, "README-pipelines", "exec"), namespace)
    features = namespace["extract"](["a.npz", "b.npz"], batch_size=32)
    assert len(features) == 2 and all(np.isclose(np.linalg.norm(f), 1, atol=1e-5) for f in features)
    assert len(features[0]) == json.loads((workspace / "runs" / "demo" / "config.json").read_text())["projection_dim"]
    top = namespace["retrieve"]("CCO", top_k=5)
    assert [hit["rank"] for hit in top] == list(range(5)) and top[0]["score"] >= top[-1]["score"]

    run_cloome(cloome_argv(push_line))
    assert (workspace / "publish" / "model" / "model.safetensors").is_file()
    assert list((workspace / "publish" / "dataset" / "images").glob("*.parquet"))


def test_data_section_python_block_runs(tmp_path, monkeypatch):
    """The datasets example as written (a small synthetic set, two epochs, two workers)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks(section("data"), "python")[0], "README-data", "exec"), namespace)
    batch, splits = namespace["batch"], namespace["splits"]
    assert batch["pixel_values"].shape[1:] == (5, 64, 64) and batch["fingerprints"].shape[1] == 1024
    assert len(set(batch["inchikey"])) == len(batch["inchikey"])  # one molecule at most once per batch
    train, test = set(splits["train"]["inchikey"]), set(splits["test"]["inchikey"])
    assert train and test and not train & test  # split by molecule


def test_data_section_prepare_lines_convert_each_layout(tmp_path, monkeypatch):
    """The three ``cloome prepare`` lines, on the same synthetic sites written as Bray npz files (``npzs/``), 16-bit
    TIFFs (``images/``, one ``index.csv`` serving both layouts) and a LoadData table with cpg0016's well and
    compound tables (``cpg0016/``); ``--num_proc 8`` as written."""
    import shutil

    import pandas as pd

    from cloome_hf.data import load_cell_painting, write_synthetic_layout

    lines = command_lines(blocks(section("data"), "bash")[0])
    assert [line.split()[:3] for line in lines] == [["cloome", "prepare", "--kind"]] * 3
    monkeypatch.chdir(tmp_path)
    options = dict(num_molecules=6, sites_per_molecule=2, num_plates=2, image_size=64, seed=0)
    npz = write_synthetic_layout(tmp_path / "w_npz", "bray_npz", **options)
    tiff = write_synthetic_layout(tmp_path / "w_tiff", "tiff", **options)
    jump = write_synthetic_layout(tmp_path / "w_jump", "jump", **options)
    shutil.move(npz["root"], "npzs")
    shutil.move(tiff["root"], "images")
    shutil.move(jump["root"], "cpg0016")
    shutil.copy(tiff["index"], "index.csv")  # the TIFF index: the Bray columns plus IMG_*
    load_data = pd.read_csv("cpg0016/load_data.csv")
    load_data.drop(columns="Metadata_JCP2022").to_csv("load_data.csv", index=False)
    load_data[["Metadata_Source", "Metadata_Plate", "Metadata_Well", "Metadata_JCP2022"]].drop_duplicates().to_csv(
        "well.csv.gz", index=False)
    pd.read_csv("cpg0016/compound.csv").to_csv("compound.csv.gz", index=False)
    for line in lines:
        run_cloome(cloome_argv(line))
    expected = set(pd.read_csv("index.csv")["SAMPLE_KEY"])
    bray, raw = (load_cell_painting(folder, split="train") for folder in ("bray_parquet", "bray_raw_parquet"))
    assert set(bray["sample_key"]) == set(raw["sample_key"]) == expected
    jump_sites = load_cell_painting("jump_parquet", split="train")
    assert len(jump_sites) == len(expected) and set(jump_sites["inchikey"]) == set(bray["inchikey"])


def test_published_weights_blocks_run_on_converted_random_checkpoints(tmp_path, monkeypatch, capsys):
    """Download -> convert -> embed the example site. The Hub is not reachable here: ``hf_hub_download`` is
    replaced by a local function that hands back random checkpoints in the upstream layout
    (tests/upstream_checkpoint.py), and the printed table must equal the independent upstream forward on the same
    processed inputs."""
    import huggingface_hub
    import torch
    import torch.nn.functional as F
    from upstream_checkpoint import make_upstream_state_dict, reference_image_features, reference_molecule_features

    from cloome_hf.processing_cloome import CloomeProcessor

    fixtures = {
        "cloome-retrieval-zero-shot.pt": make_upstream_state_dict(fingerprint_size=8192, hidden_size=64, seed=20),
        "cloome-bioactivity.pt": make_upstream_state_dict(fingerprint_size=1024, hidden_size=64, seed=21),
    }
    downloads = []

    def local_download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        torch.save({"epoch": 1, "state_dict": fixtures[filename]}, tmp_path / filename)
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", local_download)
    work = tmp_path / "work"
    work.mkdir()  # outside the clone: the README example reads the site the package ships
    monkeypatch.chdir(work)

    download_block, embed_block = blocks(section("published-weights"), "python")
    exec(compile(download_block, "README-download", "exec"), {})
    assert downloads == [("anasanchezf/cloome", "cloome-retrieval-zero-shot.pt"),
                         ("anasanchezf/cloome", "cloome-bioactivity.pt")]
    assert json.loads((work / "cloome-bioactivity" / "config.json").read_text())["molecule_config"][
        "fingerprint_size"] == 1024
    capsys.readouterr()
    namespace: dict = {}
    exec(compile(embed_block, "README-embed", "exec"), namespace)
    lines = capsys.readouterr().out.strip().splitlines()

    sd = fixtures["cloome-retrieval-zero-shot.pt"]
    processor = CloomeProcessor.from_pretrained(work / "cloome-retrieval")
    inputs = processor(images=namespace["site"], smiles=list(namespace["smiles"].values()), return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 5, 520, 696)
    image = F.normalize(reference_image_features(sd, inputs["pixel_values"]), dim=-1)
    molecules = F.normalize(reference_molecule_features(sd, inputs["fingerprints"]), dim=-1)
    expected = (image @ molecules.T)[0].tolist()
    assert lines[0].split() == ["molecule", "cosine"]
    assert [line.split()[0] for line in lines[1:]] == ["estradiol", "aspirin", "caffeine"]
    for line, value in zip(lines[1:], expected):
        assert abs(float(line.split()[1]) - value) <= 1e-3 + 1e-9


def test_jump_plate_block_runs_against_a_local_s3_server(tmp_path, monkeypatch):
    """The cpg0016 plate example with local equivalents of what needs the network: the plate (four wells: a
    compound, DMSO, a positive control and a reagent without a structure; 520 x 520 sites, the zero-shot crop) in
    its exact bucket keys on a local moto S3 server, which the unchanged ``s3://`` URLs reach through
    ``AWS_ENDPOINT_URL_S3``, read anonymously as the gallery is; cpg0016's well / compound / plate tables written
    where ``curl`` would put them; a random checkpoint in the upstream layout where ``huggingface-cli download``
    would put the published one (tests/upstream_checkpoint.py). ``pip install`` is the environment under test."""
    import pandas as pd
    import torch
    from cpg0016_layout import BUCKET, DMSO, PLATES, REAGENT, WELLS, expected_site, load_data_key, write_cpg0016
    from local_servers import moto_s3_server, upload_folder
    from upstream_checkpoint import make_upstream_state_dict

    from cloome_hf.data import load_cell_painting, decode_row
    from cloome_hf.inference.store import read_embeddings

    lines = command_lines(blocks(section("data"), "bash")[2])
    assert lines[:6] == [
        "pip install cloome-hf", "for t in well compound plate; do",
        "curl -LO https://github.com/jump-cellpainting/datasets/raw/main/metadata/$t.csv.gz", "done",
        "P=s3://cellpainting-gallery/cpg0016-jump/source_4/workspace/load_data_csv/2021_04_26_Batch1/BR00117035",
        "huggingface-cli download anasanchezf/cloome cloome-retrieval-zero-shot.pt --local-dir ."]
    plate_prefix = lines[4].split("=", 1)[1]
    plate = plate_prefix.rsplit("/", 1)[1]
    assert plate in PLATES and plate_prefix.startswith(f"s3://{BUCKET}/")
    monkeypatch.chdir(tmp_path)
    layout = write_cpg0016(tmp_path / "bucket", shape=(520, 520), sites=1, plates=(plate,))
    table = tmp_path / "bucket" / load_data_key(plate, "load_data_with_illum.parquet")
    table.parent.mkdir(parents=True)
    layout["url_table"].to_parquet(table)
    assert f"s3://{BUCKET}/{load_data_key(plate, '')}" == plate_prefix + "/"
    for name in ("well", "compound", "plate"):  # what the curl loop downloads
        layout[f"{name}s"].to_csv(f"{name}.csv.gz", index=False)
    torch.save({"epoch": 1, "state_dict": make_upstream_state_dict(fingerprint_size=8192, seed=5)},
               "cloome-retrieval-zero-shot.pt")

    with moto_s3_server() as endpoint:
        upload_folder(endpoint, tmp_path / "bucket", BUCKET)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        for line in lines[6:]:
            run_cloome(cloome_argv(line, {"P": plate_prefix}))

    images = read_embeddings(str(tmp_path / "BR00117035_embeddings" / "images")).to_pandas()
    kinds = dict(zip(images["well"], images["perturbation_type"]))
    assert kinds[next(w for w, j in WELLS.items() if j == DMSO)] == "negcon"
    assert kinds[next(w for w, j in WELLS.items() if j == REAGENT)] == "unknown"
    assert len(images) == len(WELLS) and "Metadata_JCP2022" in images and len(images["embedding"][0]) == 512
    sites = load_cell_painting("BR00117035_sites", split="train")
    assert len(sites) == len(WELLS)
    row = sites[0]
    np.testing.assert_array_equal(decode_row(row), expected_site(layout, plate, row["well"], 1))
    assert pd.read_csv("plate.csv.gz")["Metadata_Plate"].tolist() == [plate]
