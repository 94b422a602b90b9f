"""``cloome serve`` in a real browser: headless system Chromium (selenium) against a page started on 127.0.0.1.

The page's top hits must equal ``cloome search`` for the same query; a bad SMILES shows the featuriser's message
in the page; screenshots of the tabs are not blank."""

import shutil
import socket

import numpy as np
import pytest

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(DRIVER)),
                                reason="needs the system chromium and chromium-driver packages")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tiny_served_store, tmp_path_factory):
    from cloome_hf.serve import SearchService, build_app

    service = SearchService.from_stores(str(tiny_served_store["store"]))
    app = build_app(service, default_k=3)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, share=False, prevent_thread_lock=True, quiet=True)
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
        yield driver, service
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


def _not_blank(driver, path):
    from PIL import Image

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
    loaded = driver.execute_script("return arguments[0].map(i => i.complete && i.naturalWidth > 0)", images)
    assert loaded and all(loaded)
    _not_blank(driver, tmp_path / "molecule_to_sites.png")


def test_bad_smiles_shows_its_message(page, tmp_path):
    from cloome_hf.featurization_cloome import MoleculeFeaturizer

    driver, _ = page
    bad = "C1CC(N"
    with pytest.raises(ValueError) as err:
        MoleculeFeaturizer(fingerprint_size=64)([bad])
    _search_molecule(driver, bad)
    text = _wait_text(driver, "#site-hits", "Invalid SMILES")
    assert str(err.value) in text and "Traceback" not in driver.page_source


def test_site_upload_to_molecules_equals_cloome_search(page, tiny_served_store, tmp_path, capsys):
    from cloome_hf.cli import search
    from cloome_hf.data.schema import decode_row

    driver, _ = page
    site = decode_row(tiny_served_store["dataset"][5])
    path = tmp_path / "site.npz"
    np.savez(path, sample=np.moveaxis(site, 0, -1))  # a Bray .npz site: H x W x C under 'sample'
    expected = search.main(["--embeddings", str(tiny_served_store["store"]), "--images", str(path), "--k", "3"])
    capsys.readouterr()
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Site')]").click()
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
    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'About')]").click()
    assert str(tiny_served_store["store"].resolve()) in _wait_text(driver, "#about", "image store")
    _not_blank(driver, tmp_path / "about.png")
