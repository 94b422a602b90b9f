"""#22 class 5, URLs and paths around the root check: every location a table gives (and every table a user names)
goes through one resolver, cloome_hf.data.locations, with a listed set of allowed schemes and the rule that local
paths stay under the root; each site reader and the table reader are checked to go through it."""

import os

import numpy as np
import pandas as pd
import pytest

from cloome_hf.data import open_source
from cloome_hf.data.locations import ALLOWED_SCHEMES, resolve
from cloome_hf.data.remote import read_bytes, read_table
from cloome_hf.data.synthetic import write_synthetic_layout

ROOT = "/data/mirror"

# (a table's value, why it is refused); every one with the root ROOT.
REFUSED = [
    ("file://images/P1/x.tif", "file URL of the host 'images'"),  # the example: not images/P1 of the cwd
    ("file:///etc/passwd", "outside the root folder"),
    ("file://localhost/etc/passwd", "outside the root folder"),
    ("file:/etc/passwd", "outside the root folder"),
    ("file:../x.tif", "outside the root folder"),  # `file:` without slashes is a relative path, still confined
    ("FILE:///etc/passwd", "outside the root folder"),
    ("file:///data/mirror/a%2F..%2F..%2Fsecret", "outside the root folder"),  # file URLs are percent-decoded
    ("file:", "file URL without a path"),
    ("../x.tif", "outside the root folder"),
    ("a/../../x.tif", "outside the root folder"),
    ("/etc/shadow", "outside the root folder"),  # an absolute path is confined too
    ("/data/mirror/../secret", "outside the root folder"),
    ("s3://bucket/../../x.tif", "outside the root folder"),
    ("S3://bucket/a/../../../x.tif", "outside the root folder"),
    ("gs://bucket/../x.tif", "outside the root folder"),
    ("https://host/../../x.tif", "outside the root folder"),
    ("s3://bucket/%2e%2e/%2e%2e/etc/passwd", "decodes to '../../etc/passwd'"),
    ("HTTP://host/a/%2E%2E%2F%2E%2E%2Fx", "decodes to"),
    ("s3:///key.tif", "names no bucket"),
    ("ftp://host/x.tif", "scheme 'ftp', which is not allowed"),
    ("FTP://host/x.tif", "scheme 'ftp', which is not allowed"),
    ("memory://x.tif", "scheme 'memory'"),
    ("sftp://host/x.tif", "scheme 'sftp'"),
    ("hdfs://namenode/x.tif", "scheme 'hdfs'"),
    ("simplecache::s3://bucket/x.tif", "chained fsspec URL"),
    ("C:\\images\\x.tif", "Windows path"),
    ("c:/images/x.tif", "Windows path"),
    ("\\\\server\\share\\x.tif", "Windows path"),
    ("file:///C:/images/x.tif", "Windows path"),
    ("..\\..\\x.tif", "outside the root folder"),  # a Windows-made table's separators are separators
    ("a\x00b.tif", "NUL character"),
    ("   ", "is empty"),
]


@pytest.mark.parametrize("value, reason", REFUSED, ids=[repr(v) for v, _ in REFUSED])
def test_class5_a_location_is_refused_by_the_one_rule(value, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(".", r"\.")):
        resolve(value, ROOT)


ALLOWED = [
    ("images/P1/x.tif", f"{ROOT}/images/P1/x.tif"),
    ("./images/./P1/../P1/x.tif", f"{ROOT}/images/P1/x.tif"),  # normalised: what is checked is what is opened
    ("file:images/x.tif", f"{ROOT}/images/x.tif"),
    ("file:///data/mirror/images/x%20y.tif", f"{ROOT}/images/x y.tif"),
    ("FILE://localhost/data/mirror/x.tif", f"{ROOT}/x.tif"),
    ("/data/mirror/images/x.tif", f"{ROOT}/images/x.tif"),
    ("s3://cellpainting-gallery/cpg0016-jump/x.tif", f"{ROOT}/cpg0016-jump/x.tif"),  # the mirror of the bucket
    ("S3://Bucket/k/x.tif", f"{ROOT}/k/x.tif"),
    ("GS://bucket/k/x.tif", f"{ROOT}/k/x.tif"),
    ("https://host/k/x.tif?sig=1", f"{ROOT}/k/x.tif"),
    ("images\\P1\\x.tif", f"{ROOT}/images/P1/x.tif"),
    ("plate:1/x.tif", f"{ROOT}/plate:1/x.tif"),  # a colon without // is part of a file name
    ("a%2F..%2F..%2Fx.tif", f"{ROOT}/a%2F..%2F..%2Fx.tif"),  # a plain path is literal: no traversal
]


@pytest.mark.parametrize("value, expected", ALLOWED, ids=[repr(v) for v, _ in ALLOWED])
def test_class5_an_allowed_location_resolves_under_the_root(value, expected):
    assert resolve(value, ROOT) == expected


def test_class5_without_a_root_locations_are_used_as_given_but_schemes_are_still_listed():
    assert resolve("../elsewhere/x.tif") == "../elsewhere/x.tif"
    assert resolve("FILE:///abs/x.tif") == "/abs/x.tif"
    assert resolve("S3://bucket/k.tif") == "s3://bucket/k.tif"  # the scheme lower-cased for fsspec
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        resolve("ftp://host/x.tif")
    assert set(ALLOWED_SCHEMES) == {"file", "s3", "s3a", "gs", "gcs", "http", "https"}


def test_class5_a_url_root_maps_keys_under_it_and_refuses_local_paths():
    assert resolve("s3://bucket/k/x.tif", "s3://mirror/pre") == "s3://mirror/pre/k/x.tif"
    assert resolve("k/x.tif", "file:///data") == "/data/k/x.tif"  # a file-URL root is its path
    for value in ("/etc/passwd", "s3://bucket/../../x.tif", "../x.tif"):
        with pytest.raises(ValueError, match="outside the root folder"):
            resolve(value, "s3://mirror/pre")


def test_class5_a_dotdot_after_a_symbolic_link_cannot_climb_out_of_the_link(tmp_path):
    """The root's own links are the user's (followed); a table's `..` after one is resolved lexically, so it
    names a file of the root, never the link target's neighbour."""
    outside, root = tmp_path / "outside", tmp_path / "root"
    (outside / "linked").mkdir(parents=True)
    (outside / "secret.tif").write_bytes(b"secret")
    (outside / "linked" / "site.tif").write_bytes(b"site")
    root.mkdir()
    (root / "link").symlink_to(outside / "linked")
    escaped = resolve("link/../secret.tif", root)
    assert escaped == str(root / "secret.tif") and not os.path.exists(escaped)  # not outside/secret.tif
    assert open(resolve("link/site.tif", root), "rb").read() == b"site"  # the user's link is followed


# --------------------------------------------------------------------- every reader goes through the resolver
@pytest.fixture(scope="module")
def jump(tmp_path_factory):
    return write_synthetic_layout(tmp_path_factory.mktemp("jump"), "jump", num_molecules=2, sites_per_molecule=1,
                                  num_plates=1, image_size=16, seed=0)


def _load_data(jump, tmp_path, **columns):
    table = pd.read_csv(jump["load_data"])
    for column, value in columns.items():
        table.loc[1, column] = value
    table.to_csv(tmp_path / "load_data.csv", index=False)
    return tmp_path / "load_data.csv"


@pytest.mark.parametrize("column, value, reason", [
    ("PathName_OrigER", "file://images/SYN0001", "file URL of the host 'images'"),
    ("PathName_OrigER", "file:///etc", "outside the root folder"),
    ("PathName_OrigER", "FILE:../../elsewhere", "outside the root folder"),
    ("PathName_OrigER", "ftp://host/images", "scheme 'ftp'"),
    ("PathName_OrigER", "s3://bucket/%2e%2e/%2e%2e", "decodes to"),
    ("PathName_OrigER", "C:\\images\\SYN0001", "Windows path"),
    ("FileName_OrigER", "..\\..\\..\\x.tiff", "outside the root folder"),
])
def test_class5_a_load_data_location_is_refused_naming_row_and_columns(jump, tmp_path, column, value, reason):
    table = _load_data(jump, tmp_path, **{column: value})
    with pytest.raises(ValueError, match=rf"row 1: PathName_OrigER \+ FileName_OrigER .*{reason}"):
        open_source("jump", load_data=table, compounds=jump["compounds"], root=jump["root"])


def test_class5_load_data_file_urls_under_the_root_read_the_same_sites(jump, tmp_path):
    table = pd.read_csv(jump["load_data"])
    for column in [c for c in table.columns if c.startswith("PathName_")]:
        table[column] = [f"FILE://{jump['root']}/{v}".replace(" ", "%20") for v in table[column]]
    table.to_csv(tmp_path / "urls.csv", index=False)
    as_urls = open_source("jump", load_data=tmp_path / "urls.csv", compounds=jump["compounds"], root=jump["root"])
    plain = open_source("jump", load_data=jump["load_data"], compounds=jump["compounds"], root=jump["root"])
    assert len(as_urls) == len(plain) == len(table)
    np.testing.assert_array_equal(as_urls.read_image(0), plain.read_image(0))


def test_class5_illumination_locations_go_through_the_resolver(jump, tmp_path):
    table = pd.read_csv(jump["load_data"])
    for channel in ("DNA", "ER", "RNA", "AGP", "Mito"):
        table[f"URL_Illum{channel}"] = f"s3://bucket/illum/{channel}.npy"
    table.loc[0, "URL_IllumDNA"] = "s3://bucket/../../../illum.npy"
    table.to_csv(tmp_path / "illum.csv", index=False)
    with pytest.raises(ValueError, match=r"row 0: URL_IllumDNA .*outside the root folder"):
        open_source("jump", load_data=tmp_path / "illum.csv", compounds=jump["compounds"], root=jump["root"])


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    return write_synthetic_layout(tmp_path_factory.mktemp("tiff"), "tiff", num_molecules=2, sites_per_molecule=1,
                                  num_plates=1, image_size=16, seed=0)


@pytest.mark.parametrize("value, root, reason", [
    ("C:\\images\\x.tif", "root", "Windows path"),
    ("file:///etc/shadow", "root", "outside the root folder"),
    ("/etc/shadow", "root", "outside the root folder"),
    ("s3://bucket/k/x.tif", None, "is a URL; a TIFF index reads local files"),
    ("gopher://host/x.tif", None, "scheme 'gopher'"),
])
def test_class5_a_tiff_index_location_is_refused(tiff, tmp_path, value, root, reason):
    index = pd.read_csv(tiff["index"])
    index.loc[1, "IMG_Mito"] = value
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=rf"row 1: IMG_Mito .*{reason}"):
        open_source("tiff", index=tmp_path / "index.csv", root=tiff["root"] if root else None)


def test_class5_a_tiff_index_plate_folder_cannot_lead_out(tiff, tmp_path):
    index = pd.read_csv(tiff["index"])
    index.loc[0, "PLATE_ID"] = "../../.."
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"row 0: PLATE_ID \+ IMG_\w+ .*outside the root folder"):
        open_source("tiff", index=tmp_path / "index.csv", root=tiff["root"])


@pytest.mark.parametrize("key", ["file:///etc/passwd", "FILE:../../x", "C:\\x", "..\\..\\x"])
def test_class5_a_bray_sample_key_is_resolved_by_the_same_rule(tmp_path, key):
    layout = write_synthetic_layout(tmp_path / "npz", "bray_npz", num_molecules=2, sites_per_molecule=1,
                                    num_plates=1, image_size=16, seed=0)
    index = pd.read_csv(layout["index"])
    index.loc[1, "SAMPLE_KEY"] = key
    index.to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(ValueError, match=r"row 1: SAMPLE_KEY .*(outside the root folder|Windows path)"):
        open_source("bray_npz", index=tmp_path / "index.csv", root=layout["root"])


def test_class5_tables_and_files_a_user_names_go_through_the_resolver(jump, tmp_path):
    """A user's own table path is not confined to a root, but its scheme is listed and file URLs are paths."""
    table, _ = read_table(f"FILE://{jump['load_data']}", "load_data")
    assert len(table) == len(pd.read_csv(jump["load_data"]))
    for location, reason in (("ftp://host/load_data.csv", "scheme 'ftp'"), ("memory://t.csv", "scheme 'memory'"),
                             ("simplecache::https://h/t.csv", "chained fsspec URL")):
        with pytest.raises(ValueError, match=reason):
            read_table(location, "load_data")
        with pytest.raises(ValueError, match=rf"cannot read .*{reason}"):
            read_bytes(location, retries=0)
