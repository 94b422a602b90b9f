"""``cloome serve`` without a browser: binding and share defaults, filters, thumbnails, uploads, refused input."""

import numpy as np
import pytest
import tifffile

from cloome_hf.cli import serve
from local_servers import free_port


@pytest.fixture
def launched(monkeypatch):
    import gradio as gr  # here, not at the top: it takes seconds to import, and most workers never need it

    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.append(kwargs))
    return calls


@pytest.fixture(scope="module")
def service(tiny_served_store):
    from cloome_hf.serve import SearchService

    return SearchService.from_stores(str(tiny_served_store["store"]))


def test_binds_localhost_without_share_link_or_disk_files_unless_asked(tiny_served_store, launched):
    store = str(tiny_served_store["store"])
    serve.main(["--embeddings", store, "--port", "7999"])
    serve.main(["--embeddings", store, "--share", "--host", "0.0.0.0"])
    first = launched[0]
    assert (first["server_name"], first["server_port"], first["share"]) == ("127.0.0.1", 7999, False)
    assert first["allowed_paths"] == []  # no folder of the disk is served
    assert launched[1]["share"] is True and launched[1]["server_name"] == "0.0.0.0"


def test_refused_queries_are_messages_not_tracebacks(service):
    with pytest.raises(ValueError, match="Invalid SMILES 'C1CC\\(N' at position 0: extra open parentheses, "
                                         "around character 5 of 'C1CC\\(N'"):
        service.molecule_to_sites("C1CC(N")
    with pytest.raises(ValueError, match="Explicit valence for atom # 1 C"):
        service.molecule_to_sites("CC(C)(C)(C)(C)C")
    with pytest.raises(ValueError, match="'nope'"):
        service.site_by_key("nope")
    with pytest.raises(ValueError, match="no site matches the filters plate in \\['NOPLATE'\\]"):
        service.molecule_to_sites("CCO", filters={"plate": ["NOPLATE"]})


def test_filters_give_the_exact_top_k_of_the_matching_sites(service, tiny_served_store):
    from cloome_hf.inference.store import embeddings_from_arrow, read_embeddings

    table = read_embeddings(tiny_served_store["store"] / "images")
    meta = table.drop_columns(["embedding"]).to_pandas()
    vectors = embeddings_from_arrow(table.column("embedding"))
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    smiles = tiny_served_store["library"][2]
    plate = sorted(meta["plate"].unique())[1]
    hits = service.molecule_to_sites(smiles, 4, {"plate": [plate], "perturbation_type": ["trt"]})
    allowed = np.flatnonzero(((meta["plate"] == plate) & (meta["perturbation_type"] == "trt")).to_numpy())
    query = service.index.encode_molecules([smiles])[0]
    expected = allowed[np.argsort(-(vectors[allowed] @ query), kind="stable")[:4]]
    assert hits["sample_key"].tolist() == meta["sample_key"].iloc[expected].tolist()
    assert set(service.filter_choices()["concentration"]) == {1.0, 10.0}
    doses = service.molecule_to_sites(smiles, 24, {"concentration": [1.0]})
    assert len(doses) == (meta["concentration"] == 1.0).sum() and set(doses["concentration"]) == {1.0}


def test_thumbnails_are_the_stored_sites_pictures_by_row_and_key(service, tiny_served_store):
    from PIL import Image

    from cloome_hf.data.schema import decode_row
    from cloome_hf.inference.site_picture import site_picture

    ds, thumbs = tiny_served_store["dataset"], service.thumbnails
    assert len(thumbs) == len(ds)
    def reference(row):
        full = Image.fromarray(site_picture(decode_row(ds[row]), service.channel_order))
        full.thumbnail((48, 48), Image.Resampling.BILINEAR)
        return np.asarray(full, dtype=np.float32)

    for row in (0, 13, 23):  # three shards of 10 rows
        picture = thumbs.picture(row, ds[row]["sample_key"])
        assert picture.shape == (48, 48, 3)
        error = np.abs(picture - reference(row)).mean()  # lossy WebP: close to its own site, not to the next one
        assert error < 8.0 and error < np.abs(picture - reference((row + 1) % len(ds))).mean() / 2
    assert thumbs.picture(0, ds[1]["sample_key"]) is None  # another site at that row: not shown as this one
    service_without = type(service)(service.index, sites=service.sites, thumbnails=None)
    assert service_without.picture(ds[0]["sample_key"], 0).shape == (64, 64, 3)  # drawn from the source


def _channel_files(folder, site, names, order):
    paths = []
    for i in order:
        paths.append(folder / f"A01_s1_{names[i]}.tif")
        tifffile.imwrite(paths[-1], site[i])
    return [str(p) for p in paths]


def test_site_uploads_one_file_per_channel_any_order_and_refusals(service, tiny_served_store, tmp_path, capsys):
    from cloome_hf.cli import search
    from cloome_hf.data.schema import decode_row
    from cloome_hf.serve import uploads

    site = decode_row(tiny_served_store["dataset"][4])
    stack = tmp_path / "site.tif"
    tifffile.imwrite(stack, site)  # multi-page TIFF, a page per channel
    expected = search.main(["--embeddings", str(tiny_served_store["store"]), "--images", str(stack), "--k", "3"])
    capsys.readouterr()
    jump = ["Mito", "ER", "RNA", "AGP", "DNA"]  # JUMP names of the canonical channels
    paths = _channel_files(tmp_path, site, jump, [4, 2, 0, 3, 1])
    upload = uploads.read_uploaded_site(paths, service.channel_order)
    assert np.array_equal(upload.pixels, site)
    hits = service.site_to_molecules(upload.query, 3)
    assert hits["smiles"].tolist() == expected["smiles"].tolist()
    np.testing.assert_allclose(hits["score"], expected["score"], atol=1e-6)
    with pytest.raises(ValueError, match="4 files uploaded; a site needs one file per channel, 5"):
        uploads.read_uploaded_site(paths[:4], service.channel_order)
    np.save(tmp_path / "three.npy", site[:3])
    with pytest.raises(ValueError, match="three.npy: a site needs 5 channels .* shape \\(3, 64, 64\\)"):
        uploads.read_uploaded_site(str(tmp_path / "three.npy"), service.channel_order)
    np.save(tmp_path / "huge.npy", np.zeros((5, 4100, 4100), np.uint8))
    with pytest.raises(ValueError, match="huge.npy is 4100 x 4100 pixels; the page takes sites up to"):
        uploads.read_uploaded_site(str(tmp_path / "huge.npy"), service.channel_order)


def test_similar_sites_equal_cloome_search_similar(service, tiny_served_store, tmp_path, capsys):
    from cloome_hf.cli import search
    from cloome_hf.data.schema import decode_row

    ds = tiny_served_store["dataset"]
    path = tmp_path / "site.npz"
    np.savez(path, sample=np.moveaxis(decode_row(ds[7]), 0, -1))
    expected = search.main(["--embeddings", str(tiny_served_store["store"]), "--images", str(path), "--similar",
                            "--k", "4"])
    capsys.readouterr()
    assert service.similar_sites(str(path), 4)["sample_key"].tolist() == expected["sample_key"].tolist()
    by_key = service.similar_sites(service.site_by_key(ds[7]["sample_key"]), 4)
    assert by_key["sample_key"].iloc[0] == ds[7]["sample_key"]  # a stored site is its own nearest neighbour


def test_about_names_model_weights_digest_dataset_and_card_summary(service, tiny_served_store):
    from cloome_hf.inference.store import read_info
    from cloome_hf.serve.service import model_card_summary

    info = read_info(tiny_served_store["store"])
    assert service.about["model weights digest"] == info["model_weights"]
    assert service.about["source dataset"] == str(tiny_served_store["root"] / "sites")
    card = (tiny_served_store["model"] / "README.md").read_text()
    summary = model_card_summary(str(tiny_served_store["model"]))
    assert summary and summary in card and not summary.startswith(("#", "---"))


def test_space_folder_runs_the_page(tiny_served_store, service, tmp_path):
    import gradio as gr

    """``cloome space`` writes app.py, requirements.txt and a README with Space metadata; the written app.py,
    run as a Space runs it, serves the page and answers a query as the page of ``cloome serve`` does."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    import yaml

    from cloome_hf.cli import space

    out = tmp_path / "space"
    space.main(["--embeddings", str(tiny_served_store["store"]), "--output_dir", str(out), "--k", "3"])
    assert sorted(os.listdir(out)) == ["README.md", "app.py", "requirements.txt"]
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert (meta["sdk"], meta["app_file"], meta["sdk_version"]) == ("gradio", "app.py", gr.__version__)
    assert "cloome-hf[serve]" in (out / "requirements.txt").read_text()
    with pytest.raises(ValueError, match="holds other files than a Space's"):
        space.main(["--embeddings", str(tiny_served_store["store"]), "--output_dir", str(tiny_served_store["root"])])

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline, page = time.monotonic() + 120, None
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    page = response.read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None, proc.stdout.read().decode() if proc.poll() is not None else "no answer in 120 s"
        assert "CLOOME search" in page and "Molecule → sites" in page and "Site → similar sites" in page
        from gradio_client import Client

        smiles = tiny_served_store["library"][1]
        answer = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            smiles, 3, [], [], [], api_name="/molecule_query")
        expected = service.molecule_to_sites(smiles, 3)
        assert all(f"| {key} |" in answer[2] for key in expected["sample_key"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_stored_site_is_queried_by_its_embedding_where_images_are_out_of_reach(service, tiny_served_store,
                                                                                  tmp_path):
    """A saved IVF index (``--index``) with thumbnails and no reachable source: a key still queries, by the
    stored embedding, and gives what its pixels give."""
    from cloome_hf.inference.search import CloomeIndex
    from cloome_hf.serve import SearchService

    store = str(tiny_served_store["store"])
    CloomeIndex.from_store(store, index_type="ivf").save(tmp_path / "index")
    remote = SearchService.from_stores(store, index=str(tmp_path / "index"))
    remote.sites = None  # as in a Space: only the store's embeddings and thumbnails
    assert remote.about["index type"] == "ivf"
    key = tiny_served_store["dataset"][11]["sample_key"]
    stored = remote.stored_site(key)
    by_pixels = service.site_to_molecules(service.site_by_key(key), 3)
    by_embedding = remote.site_to_molecules(stored, 3)
    assert by_embedding["smiles"].tolist() == by_pixels["smiles"].tolist()
    np.testing.assert_allclose(by_embedding["score"], by_pixels["score"], atol=1e-4)
    assert remote.similar_sites(stored, 2)["sample_key"].iloc[0] == key
    assert remote.picture(key, stored.row).shape == (48, 48, 3)  # from the thumbnails
    with pytest.raises(ValueError, match="no site with sample_key 'nope' in the embedding store"):
        remote.stored_site("nope")


def test_a_store_that_is_neither_a_folder_nor_a_hub_id_is_one_line(tmp_path, capsys):
    from cloome_hf.cli import main

    missing = str(tmp_path / "no" / "store")
    assert main(["serve", "--embeddings", missing]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"cloome serve: error: embedding store {missing!r} does not exist")
    assert main(["space", "--embeddings", missing, "--output_dir", str(tmp_path / "space")]) == 2
    assert f"--embeddings {missing!r} does not exist" in capsys.readouterr().err
    assert main(["serve", "--embeddings", "a/b/c"]) == 2
    assert capsys.readouterr().err.splitlines()[0] == ("cloome serve: error: embedding store 'a/b/c' is neither a folder "
                                                       "here nor a Hub dataset id (owner/name or owner/name@revision)")
