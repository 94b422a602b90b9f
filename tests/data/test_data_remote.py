"""Reading JUMP plates over the network: a local moto S3 server (started and stopped here, real s3fs over real
HTTP, nothing patched in-process) holding a synthetic plate set in the exact cpg0016 bucket layout, read through
the ``URL_`` form; and a flaky HTTP server for retries. Stored images are compared with the independent
computation of tests/cpg0016_layout.py."""

import os

import numpy as np
import pytest
from cpg0016_layout import (
    ALOXISTATIN,
    BUCKET,
    COMPOUND,
    DMSO,
    PLATES,
    REAGENT,
    WELLS,
    expected_site,
    illum_key,
    image_key,
    load_data_key,
    write_cpg0016,
)
from local_servers import flaky_http_server, get_count, moto_s3_server, s3_client, upload_folder

from cloome_hf.data import decode_row, load_cell_painting, open_source
from cloome_hf.data.remote import read_bytes, resolve_location, storage_options_for

TYPE_OF = {COMPOUND: "trt", DMSO: "negcon", ALOXISTATIN: "poscon", REAGENT: "unknown"}
PLATE1, PLATE2 = list(PLATES)
LOAD_DATA = load_data_key(PLATE1, "load_data_with_illum.parquet")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The plates, their load_data table (URL_ form, Parquet) and cpg0016's well / compound / plate tables in a
    public bucket named like the Cell Painting Gallery on a local moto server."""
    root = tmp_path_factory.mktemp("bucket")
    layout = write_cpg0016(root)
    os.makedirs(os.path.dirname(root / LOAD_DATA), exist_ok=True)
    layout["url_table"].to_parquet(root / LOAD_DATA, index=False)
    os.makedirs(root / "metadata")
    layout["wells"].to_csv(root / "metadata" / "well.csv.gz", index=False)
    layout["compounds"].to_csv(root / "metadata" / "compound.csv.gz", index=False)
    layout["plates"].to_csv(root / "metadata" / "plate.csv.gz", index=False)
    with moto_s3_server() as endpoint:
        upload_folder(endpoint, root, BUCKET, public=True)
        yield dict(layout, endpoint=endpoint, options={"client_kwargs": {"endpoint_url": endpoint}})


def _url(key):
    return f"s3://{BUCKET}/{key}"


def test_plate_from_s3_url_form_equals_raw_over_illum(s3, tmp_path):
    # no credentials are given: the Cell Painting Gallery bucket is read anonymously by default
    ds = load_cell_painting(_url(LOAD_DATA), compounds=_url("metadata/compound.csv.gz"),
                            wells=_url("metadata/well.csv.gz"), split="train", cache_dir=str(tmp_path),
                            source_options={"storage_options": s3["options"],
                                            "plates": _url("metadata/plate.csv.gz")})
    assert len(ds) == 16
    for row in ds:
        well = row["well"]
        np.testing.assert_array_equal(decode_row(row), expected_site(s3, row["plate"], well, row["site"]))
        assert row["perturbation_type"] == TYPE_OF[WELLS[well]] and row["Metadata_PlateType"] == "COMPOUND"
    streamed = load_cell_painting(_url(LOAD_DATA), kind="jump", compounds=_url("metadata/compound.csv.gz"),
                                  wells=_url("metadata/well.csv.gz"), split="train", streaming=True,
                                  source_options={"storage_options": s3["options"],
                                                  "plates": _url("metadata/plate.csv.gz")})
    assert list(streamed) == ds.to_list()


def test_anonymous_by_default_only_for_the_gallery(s3, tmp_path):
    assert storage_options_for(_url("x"), {}) == {"anon": True}
    assert storage_options_for(_url("x"), {"key": "k", "secret": "s"}) == {"key": "k", "secret": "s"}
    assert storage_options_for("s3://my-lab-bucket/x", {}) == {}
    # a private object in the gallery bucket: the anonymous default is refused by the server, credentials work
    key = "private/r01c01f01p01-ch1sk1fk1fl1.tiff"
    with open(tmp_path / "site.tiff", "wb") as f:
        f.write(read_bytes(_url(image_key(PLATE1, "A01", 1, "Mito")), s3["options"]))
    s3_client(s3["endpoint"]).put_object(Bucket=BUCKET, Key=key, Body=(tmp_path / "site.tiff").read_bytes())
    with pytest.raises(ValueError, match=rf"cannot read {_url(key)}: PermissionError"):
        read_bytes(_url(key), s3["options"], retry_wait=0)
    signed = dict(s3["options"], key="testing", secret="testing")
    assert read_bytes(_url(key), signed) == (tmp_path / "site.tiff").read_bytes()


def test_unreadable_url_names_plate_well_site_and_url(s3, tmp_path):
    table = s3["url_table"].copy()
    gone = _url("cpg0016-jump/source_4/images/2021_04_26_Batch1/images/missing/r01c01f01p01-ch3sk1fk1fl1.tiff")
    table.loc[5, "URL_OrigRNA"] = gone
    bad_illum = _url(illum_key(PLATE2, "AGP").replace(PLATE2 + "_", "nowhere_"))
    table.loc[table.Metadata_Plate == PLATE2, "URL_IllumAGP"] = bad_illum
    table.to_parquet(tmp_path / "load_data.parquet", index=False)
    source = open_source("jump", load_data=tmp_path / "load_data.parquet", storage_options=s3["options"],
                         retry_wait=0)
    with pytest.raises(ValueError, match=rf"row 5 .*plate {PLATE1}, well B01, site 2.*cannot read {gone}: "
                                         "FileNotFoundError"):
        list(source.iter_rows([5]))
    with pytest.raises(ValueError, match=rf"plate {PLATE2}, well A01, site 1.*illumination function of plate "
                                         rf"{PLATE2}, channel AGP.*cannot read {bad_illum}"):
        list(source.iter_rows([8]))
    skipping = open_source("jump", load_data=tmp_path / "load_data.parquet", storage_options=s3["options"],
                           errors="skip", retry_wait=0)
    assert len(list(skipping.iter_rows())) == 7 and len(skipping.skipped) == 9


def test_transient_errors_are_retried_with_backoff(tmp_path):
    layout = write_cpg0016(tmp_path / "files", plates=(PLATE1,), wells={"A01": COMPOUND}, sites=1)
    with flaky_http_server(tmp_path / "files", failures=2) as base:
        def table(prefix):
            t = layout["url_table"].copy()
            for c in (c for c in t if c.startswith("URL_")):
                t[c] = [u.replace(f"s3://{BUCKET}", f"{base}/{prefix}") for u in t[c]]
            return t

        os.symlink(tmp_path / "files", tmp_path / "files" / "a")
        os.symlink(tmp_path / "files", tmp_path / "files" / "b")
        patient = open_source("jump", load_data=table("a"), retries=2, retry_wait=0.01)
        rows = list(patient.iter_rows())
        np.testing.assert_array_equal(decode_row(rows[0]), expected_site(layout, PLATE1, "A01", 1))
        dna = "/a/" + image_key(PLATE1, "A01", 1, "DNA")
        assert get_count(base, dna) == 3  # two 503s, then the file
        assert get_count(base, "/a/" + illum_key(PLATE1, "DNA")) == 3  # the illumination function, read once
        impatient = open_source("jump", load_data=table("b"), retries=1, retry_wait=0.01)
        with pytest.raises(ValueError, match=rf"plate {PLATE1}, well A01, site 1.*cannot read {base}/b/.* after 2 "
                                             r"attempts.*503"):
            list(impatient.iter_rows())
        missing = f"{base}/a/nothing/here.tiff"
        with pytest.raises(ValueError, match=rf"cannot read {missing}: FileNotFoundError"):
            read_bytes(missing, retries=5, retry_wait=10)  # permanent: no retry (10 s waits would time out)
        assert get_count(base, "/a/nothing/here.tiff") == 1


def test_locations_map_to_a_local_mirror():
    url = _url("cpg0016-jump/source_4/images/b/images/p/Images/f.tiff")
    assert resolve_location(url, "/data/mirror") == "/data/mirror/cpg0016-jump/source_4/images/b/images/p/Images/f.tiff"
    assert resolve_location("images/p/f.tiff", "/data") == "/data/images/p/f.tiff"
    assert resolve_location("/data/abs/f.tiff", "/data") == "/data/abs/f.tiff"  # an absolute path inside the root
    with pytest.raises(ValueError, match="outside the root folder /data"):  # #22 class 5: local paths stay under it
        resolve_location("/abs/f.tiff", "/data")
    assert resolve_location(url) == url
