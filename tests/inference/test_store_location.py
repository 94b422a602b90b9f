"""Stores given as Hub dataset ids (``owner/name[@revision]``): found in the Hugging Face cache by the real
``snapshot_download``, read as their local folder would be; unreachable ones and mistyped folders refused in one
line, a mistyped folder never sent to the Hub."""

import re
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest

from cloome_hf.cli import main as cloome
from conftest import run_cloome
from cloome_hf.inference.store_location import hub_repo_id

ROOT = Path(__file__).resolve().parents[2]
REPO = "cloome-test/tiny-store"


def _hub_layout(layout, store, tmp_path):
    """The files a Hub dataset of ``store`` holds: the folder as uploaded (``hf upload``, thumbnails included), or
    what ``cloome push --embeddings`` commits (Parquet shards per config, the info file and the card)."""
    if layout == "uploaded folder":
        return store
    from cloome_hf.publish.hub import write_dataset_repo

    write_dataset_repo(store, tmp_path / "pushed", dataset_id=REPO)
    return tmp_path / "pushed"


def _search_by_id_equals_by_folder(flag, folder, repo_id, smiles, k):
    """``cloome search FLAG repo_id`` (and ``@v1``) gives the hits, in order, and scores of ``FLAG folder``;
    returns the folder's hits."""
    from cloome_hf.cli import search

    queries = ["--smiles", *smiles, "--k", str(k)]
    local = search.main([flag, str(folder), *queries])
    for location in (repo_id, f"{repo_id}@v1"):
        hub = search.main([flag, location, *queries])
        assert hub["sample_key"].tolist() == local["sample_key"].tolist()
        np.testing.assert_allclose(hub["score"], local["score"], rtol=1e-6)
    return local


@pytest.mark.parametrize("layout", ["uploaded folder", "pushed"])
def test_search_over_a_hub_dataset_id_gives_the_folders_hits(layout, tiny_served_store, hub_cache, tmp_path,
                                                              monkeypatch, capsys):
    store = tiny_served_store["store"]
    hub_cache(REPO, _hub_layout(layout, store, tmp_path), refs=("main", "v1"))
    monkeypatch.chdir(tmp_path)  # no folder named like the id here
    local = _search_by_id_equals_by_folder("--embeddings", store, REPO, tiny_served_store["library"][:2], 5)
    assert len(set(local["sample_key"])) > 1


@pytest.mark.parametrize("layout", ["uploaded folder", "pushed"])
def test_the_page_opens_a_hub_dataset_id_as_it_opens_the_folder(layout, tiny_served_store, hub_cache, tmp_path,
                                                                 monkeypatch):
    from cloome_hf.serve import SearchService

    store = tiny_served_store["store"]
    snapshot = hub_cache(REPO, _hub_layout(layout, store, tmp_path))
    monkeypatch.chdir(tmp_path)
    local = SearchService.from_stores(str(store))
    hub = SearchService.from_stores(REPO, molecules=REPO)
    smiles = tiny_served_store["library"][3]
    expected, got = local.molecule_to_sites(smiles, 4), hub.molecule_to_sites(smiles, 4)
    assert got["sample_key"].tolist() == expected["sample_key"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    key, row = got["sample_key"].iloc[0], int(got["row"].iloc[0])
    np.testing.assert_array_equal(hub.thumbnails.picture(row, key), local.thumbnails.picture(row, key))
    site = local.site_by_key(key)
    assert hub.site_to_molecules(site, 3)["smiles"].tolist() == local.site_to_molecules(site, 3)["smiles"].tolist()
    assert hub.about["embedding store"] == f"{REPO} (Hub dataset; snapshot {snapshot})"
    assert hub.about["molecule store"].startswith(f"{REPO} (Hub dataset")


def test_offline_and_not_cached_is_one_line_naming_the_id(hub_cache, tmp_path):
    proc = run_cloome(["search", "--embeddings", "cloome-test/absent", "--smiles", "CCO"], tmp_path,
                      env={"HF_HUB_OFFLINE": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"cloome search: error: embedding store 'cloome-test/absent' is not a local folder and could "
                        r"not be fetched from the Hub \(offline: HF_HUB_OFFLINE is set and the dataset is not in the "
                        rf"cache {re.escape(str(tmp_path / 'hf_cache'))}\)", lines[-2]), lines[-2:]
    assert lines[-1] == ("cloome search: hint: fetch it once while online (unset HF_HUB_OFFLINE), or give the store's "
                         "local folder")


def test_a_revision_not_in_the_cache_is_the_same_offline_error(tiny_served_store, hub_cache, tmp_path, monkeypatch,
                                                                capsys):
    hub_cache(REPO, tiny_served_store["store"])
    monkeypatch.chdir(tmp_path)
    assert cloome(["serve", "--embeddings", f"{REPO}@v2"]) == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith(f"cloome serve: error: embedding store '{REPO}@v2' is not a local folder and could not be "
                            "fetched from the Hub (offline: HF_HUB_OFFLINE is set"), error


@pytest.mark.parametrize("location, message", [
    ("./stroe", "embedding store './stroe' does not exist"),
    ("data/stroe", "embedding store 'data/stroe' does not exist .*; .*data holds sites"),
    ("{tmp}/no/store", "embedding store '{tmp}/no/store' does not exist .*; {tmp}/no does not exist either"),
    ("data/sites/images/x.parquet", "embedding store 'data/sites/images/x.parquet' is a file, not a folder"),
    ("some/deep/store", "embedding store 'some/deep/store' is neither a folder here nor a Hub dataset id"),
])
def test_a_mistyped_folder_is_refused_without_a_hub_lookup(location, message, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append((a, k)))
    (tmp_path / "data" / "sites" / "images").mkdir(parents=True)
    (tmp_path / "data" / "sites" / "images" / "x.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    location, message = location.format(tmp=tmp_path), message.format(tmp=re.escape(str(tmp_path)))
    assert cloome(["search", "--embeddings", location, "--smiles", "CCO"]) == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert re.fullmatch(f"cloome search: error: {message}.*", error), error
    assert hint.startswith("cloome search: hint: ")
    assert calls == []


@pytest.mark.parametrize("location, expected", [
    ("owner/name", ("owner/name", None)),
    ("owner/name@v1.0", ("owner/name", "v1.0")),
    ("owner/name@refs/pr/1", ("owner/name", "refs/pr/1")),
    ("owner/name@", None),
    ("./owner/name", None),
    ("/owner/name", None),
    ("name", None),
    ("a/b/c", None),
    ("own er/name", None),
    ("owner/na--me", None),
])
def test_hub_repo_ids_are_told_from_paths(location, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_repo_id(location) == expected
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert hub_repo_id("owner/name") is None  # a folder here wins


def test_space_links_the_dataset_without_its_revision(tmp_path, monkeypatch):
    from cloome_hf.cli import space

    monkeypatch.chdir(tmp_path)
    space.main(["--embeddings", f"{REPO}@v1", "--model", "me/cloome", "--output_dir", "space"])
    readme, app = (tmp_path / "space" / "README.md").read_text(), (tmp_path / "space" / "app.py").read_text()
    assert f"datasets:\n- {REPO}\n" in readme and "models:\n- me/cloome\n" in readme
    assert f"EMBEDDINGS = '{REPO}@v1'" in app and f"cloome serve --model me/cloome --embeddings {REPO}@v1" in readme
    with pytest.raises(FileNotFoundError, match="--embeddings './stroe' does not exist"):
        space.main(["--embeddings", "./stroe", "--output_dir", "space2"])


# ------------------------------------------------------------------- a saved index given as a Hub dataset id
INDEX_REPO = "cloome-test/tiny-index"


@pytest.fixture
def saved_index(tiny_served_store, tmp_path):
    from cloome_hf.cli import search

    search.main(["--embeddings", str(tiny_served_store["store"]), "--save_index", str(tmp_path / "index")])
    return tmp_path / "index"


def test_search_and_the_page_read_a_saved_index_from_the_hub_cache(saved_index, tiny_served_store, hub_cache,
                                                                   tmp_path, monkeypatch):
    from cloome_hf.serve import SearchService

    snapshot = hub_cache(INDEX_REPO, saved_index, refs=("main", "v1"))
    monkeypatch.chdir(tmp_path)  # no folder named like the id here
    local = _search_by_id_equals_by_folder("--index", saved_index, INDEX_REPO, tiny_served_store["library"][:2], 4)
    page = SearchService.from_stores(str(tiny_served_store["store"]), index=INDEX_REPO)
    assert page.about["saved index"] == f"{INDEX_REPO} (Hub dataset; snapshot {snapshot})"
    smiles = tiny_served_store["library"][0]
    assert page.molecule_to_sites(smiles, 4)["sample_key"].tolist() == local["sample_key"].tolist()[:4]


def test_an_index_id_offline_and_not_cached_is_one_line_naming_it(hub_cache, tmp_path):
    proc = run_cloome(["search", "--index", "cloome-test/absent-index", "--smiles", "CCO"], tmp_path,
                      env={"HF_HUB_OFFLINE": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-2].startswith("cloome search: error: saved index 'cloome-test/absent-index' is not a local folder "
                                "and could not be fetched from the Hub (offline: HF_HUB_OFFLINE is set"), lines[-2:]


@pytest.mark.parametrize("location, message, hint", [
    ("file://{tmp}/index", "saved index 'file://{tmp}/index' is a file:// URL, not a folder here or a Hub dataset id",
     "give the path itself: {tmp}/index"),
    ("hf://datasets/owner/index", "saved index 'hf://datasets/owner/index' is a hf:// URL",
     "give the dataset id itself: owner/index"),
    ("s3://bucket/index", "saved index 's3://bucket/index' is a s3:// URL", "copy it into a folder here first"),
    ("./index-typo", "saved index './index-typo' does not exist", ""),
    ("index/index_config.json", "saved index 'index/index_config.json' is a file, not a folder",
     "give the folder 'cloome search --save_index' wrote"),
])
def test_an_index_location_that_is_neither_is_refused_before_the_hub(location, message, hint, saved_index, tmp_path,
                                                                      monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append((a, k)))
    (saved_index / "index_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    location = location.format(tmp=tmp_path)
    assert cloome(["search", "--index", location, "--smiles", "CCO"]) == 2
    error, got_hint = capsys.readouterr().err.splitlines()
    assert error.startswith("cloome search: error: " + message.format(tmp=tmp_path)), error
    assert got_hint.startswith("cloome search: hint: " + hint.format(tmp=tmp_path)), got_hint
    assert calls == []
