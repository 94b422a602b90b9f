"""``cloome serve`` in a real browser: headless system Chromium (selenium) against a page started on 127.0.0.1.

The page's top hits must equal ``cloome search`` for the same query and its pictures load; a bad SMILES shows the
featuriser's message in the page; screenshots of the tabs are not blank; the server hands out no file of the disk.
One server and one browser serve every test of the module."""

import io
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from local_servers import free_port  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(DRIVER)),
                                reason="needs the system chromium and chromium-driver packages")


@pytest.fixture(scope="module")
def page(tiny_served_store, tmp_path_factory):
    from cloome_hf.serve import SearchService, build_app, launch

    service = SearchService.from_stores(str(tiny_served_store["store"]))
    app = build_app(service, default_k=3)
    port = free_port()
    launch(app, port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#smiles textarea")))
        yield driver, f"http://127.0.0.1:{port}"
    finally:
        driver.quit()
        app.close()


def _search_molecule(driver, smiles):
    box = driver.find_element(By.CSS_SELECTOR, "#smiles textarea")
    box.clear()
    box.send_keys(smiles)
    driver.find_element(By.CSS_SELECTOR, "#search-molecule").click()


def _wait_text(driver, selector, needle):
    WebDriverWait(driver, 30).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, selector), needle))
    return driver.find_element(By.CSS_SELECTOR, selector).text


def _get(url) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def _tab(driver, name):
    driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()


def _not_blank(driver, path):
    driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 5.0, f"screenshot {path} is blank"


def test_molecule_to_sites_equals_cloome_search(page, tiny_served_store, tmp_path, capsys):
    from cloome_hf.cli import search

    driver, _ = page
    smiles = tiny_served_store["library"][0]
    expected = search.main(["--embeddings", str(tiny_served_store["store"]), "--smiles", smiles, "--k", "3"])
    capsys.readouterr()
    _search_molecule(driver, smiles)
    WebDriverWait(driver, 30).until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#site-hits table tbody tr")))
    rows = driver.find_elements(By.CSS_SELECTOR, "#site-hits table tbody tr")
    page_keys = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows]
    assert page_keys == expected.sort_values("rank")["sample_key"].tolist()
    images = WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#site-gallery img") or None)
    WebDriverWait(driver, 30).until(lambda d: all(d.execute_script(
        "return arguments[0].map(i => i.complete && i.naturalWidth > 0)", images)))
    for image in images:  # each picture is served: HTTP 200 and an image that decodes, not blank
        status, body = _get(image.get_attribute("src"))
        assert status == 200 and "/gradio_api/file=" in image.get_attribute("src"), image.get_attribute("src")
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("L"), dtype=np.float32)
        assert pixels.size > 0 and pixels.std() > 1.0
    _not_blank(driver, tmp_path / "molecule_to_sites.png")


def test_bad_smiles_shows_its_message(page, tmp_path):
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    driver, _ = page
    bad = "C1CC(N"
    with pytest.raises(ValueError) as err:
        MoleculeFeaturizer(fingerprint_size=64)([bad])
    _search_molecule(driver, bad)
    text = _wait_text(driver, "#site-hits", "Invalid SMILES")
    assert str(err.value) in text and "around character 5" in text and "Traceback" not in driver.page_source


def test_site_upload_to_molecules_equals_cloome_search(page, tiny_served_store, tmp_path, capsys):
    from cloome_hf.cli import search
    from cloome_hf.data.schema import decode_row

    driver, _ = page
    site = decode_row(tiny_served_store["dataset"][5])
    path = tmp_path / "site.npz"
    np.savez(path, sample=np.moveaxis(site, 0, -1))  # a Bray .npz site: H x W x C under 'sample'
    expected = search.main(["--embeddings", str(tiny_served_store["store"]), "--images", str(path), "--k", "3"])
    capsys.readouterr()
    _tab(driver, "Site → molecules")
    driver.find_element(By.CSS_SELECTOR, "#site-upload input[type=file]").send_keys(str(path))
    # the upload finishes asynchronously: until it has, a search answers "no site with sample_key ''"; retry
    def answered(d):
        if not d.find_elements(By.CSS_SELECTOR, "#molecule-hits table tbody tr"):
            d.find_element(By.CSS_SELECTOR, "#search-site").click()
            return False
        return True

    WebDriverWait(driver, 40, poll_frequency=2).until(answered)
    rows = driver.find_elements(By.CSS_SELECTOR, "#molecule-hits table tbody tr")
    page_smiles = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows]
    assert page_smiles == expected.sort_values("rank")["smiles"].tolist()
    _not_blank(driver, tmp_path / "site_to_molecules.png")


def test_similar_sites_and_about_tabs(page, tiny_served_store, tmp_path):
    driver, _ = page
    key = tiny_served_store["dataset"][9]["sample_key"]
    _tab(driver, "similar sites")
    driver.find_element(By.CSS_SELECTOR, "#similar-key textarea").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#search-similar").click()
    WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#similar-hits table tbody tr")))
    first = driver.find_elements(By.CSS_SELECTOR, "#similar-hits table tbody tr")[0]
    assert first.find_elements(By.TAG_NAME, "td")[2].text == key  # a stored site is its own nearest neighbour
    _not_blank(driver, tmp_path / "similar_sites.png")
    _tab(driver, "About")
    assert str(tiny_served_store["store"].resolve()) in _wait_text(driver, "#about", "embedding store")
    assert "Hoechst (DNA)" in _wait_text(driver, "#legend", "Hoechst")
    _not_blank(driver, tmp_path / "about.png")


def test_an_upload_with_the_wrong_channels_is_refused_in_the_page(page, tmp_path):
    driver, _ = page
    path = tmp_path / "three_channels.npy"
    np.save(path, np.zeros((3, 64, 64), np.uint8))
    _tab(driver, "similar sites")
    driver.find_element(By.CSS_SELECTOR, "#similar-upload input[type=file]").send_keys(str(path))

    def refused(d):  # until the upload has landed the page asks for a site; retry the search
        text = d.find_element(By.CSS_SELECTOR, "#similar-hits").text
        if "needs 5 channels" not in text:
            d.find_element(By.CSS_SELECTOR, "#search-similar").click()
            return False
        return text

    text = WebDriverWait(driver, 40, poll_frequency=2).until(refused)
    assert "three_channels.npy: a site needs 5 channels" in text and "(3, 64, 64)" in text
    assert "Traceback" not in driver.page_source


def test_server_hands_out_no_file_of_the_disk(page, tiny_served_store):
    """The route the gallery's pictures come by (see the first test) refuses any other file."""
    _, url = page
    beside = tiny_served_store["root"] / "library.csv"  # next to the store, readable by the server's user
    for path in ("/etc/passwd", str(beside), str(tiny_served_store["store"] / "embedding_info.json")):
        for route in (f"{url}/gradio_api/file={path}", f"{url}/file={path}"):
            status, body = _get(route)
            assert status != 200 and beside.read_bytes() not in body, route
