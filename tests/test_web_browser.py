"""The clinic station in a real browser: headless Chromium driven by Selenium against a real
`edge-toolkit serve` (waitress) uploads a picture, reads the result, moves the heatmap slider,
opens the history and downloads the CSV. Skips when Chromium or its driver is not installed
(`.ci/run` installs them: apt-get install chromium chromium-driver).

Set EDGE_TOOLKIT_SCREENSHOT=docs/serve.png to refresh the README's screenshot.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import cached_models
from web_helpers import GAP, ROOT, start_server, xray_png

pytest.importorskip("flask")
pytest.importorskip("waitress")
pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no headless browser: apt-get install chromium chromium-driver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,1000")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("ai_edge_litert")
    built = cached_models(tmp_path_factory, {"gap": GAP})["gap"]
    data = tmp_path_factory.mktemp("station")
    model = data.parent / "phantom-gap-detector-int8.tflite"  # the name the page shows
    shutil.copyfile(built, model)
    proc, port, _ = start_server(model, data, "--no-camera")
    yield f"http://127.0.0.1:{port}", data
    proc.send_signal(signal.SIGTERM)
    proc.stderr.read()
    proc.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.implicitly_wait(0)
    try:
        yield driver, downloads
    finally:
        driver.quit()


def _wait(driver, css: str, timeout: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def test_upload_result_history_and_csv_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, data = server
    driver, downloads = browser
    pic = tmp_path / "phantom-0042.png"
    pic.write_bytes(xray_png(4, side=384))
    junk = tmp_path / "notes.png"
    junk.write_text("not a picture")

    driver.get(url + "/")
    assert "not a diagnosis" in driver.find_element(By.ID, "disclaimer").text
    files = driver.find_element(By.ID, "files")
    assert files.get_attribute("accept").startswith("image/*")
    assert driver.find_element(By.ID, "photo").get_attribute("capture") == "environment"
    files.send_keys(f"{pic}\n{junk}")  # two files in one pick
    assert "2 chosen" in driver.find_element(By.ID, "chosen").text  # the page's script ran
    driver.find_element(By.ID, "reference").send_keys("STUDY-42")
    driver.find_element(By.ID, "submit").click()

    label = _wait(driver, "p.label").text.lower()
    assert label in ("fractured", "not fractured")
    assert "notes.png: not an image file" in driver.find_element(By.ID, "errors").text
    prob = driver.find_element(By.CSS_SELECTOR, ".p-value").text
    assert prob.endswith("%") and 0.0 <= float(prob[:-1]) <= 100.0
    heat = driver.find_element(By.CSS_SELECTOR, "img.heat")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                 heat) > 0
    fill = driver.find_element(By.CSS_SELECTOR, ".meter .fill")
    assert fill.value_of_css_property("width") != "0px"  # the meter was drawn
    slider = driver.find_element(By.CSS_SELECTOR, "input[type=range]")
    driver.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent("
                          "new Event('input'))", slider)
    assert float(heat.value_of_css_property("opacity")) == pytest.approx(0.8)
    driver.execute_script("arguments[0].value = 50; arguments[0].dispatchEvent("
                          "new Event('input'))", slider)
    shot = tmp_path / "serve.png"
    driver.save_screenshot(str(shot))
    with Image.open(shot) as img:
        assert img.size[0] >= 800
        target = os.environ.get("EDGE_TOOLKIT_SCREENSHOT")
        if target:  # refresh the README's picture: small, 128 colours
            small = img.convert("RGB").resize((img.width * 3 // 4, img.height * 3 // 4))
            small.quantize(128).save(ROOT / target if not Path(target).is_absolute()
                                     else target, optimize=True)

    # the result is already in the history database, and on the history page
    driver.find_element(By.ID, "nav-history").click()
    table = _wait(driver, "#history tr.row")
    assert "phantom-0042.png" in table.text and "STUDY-42" in table.text
    driver.find_element(By.ID, "csv").click()
    deadline = time.monotonic() + 30
    done: list[Path] = []
    while time.monotonic() < deadline and not done:
        done = [p for p in downloads.glob("history-*.csv")]
        time.sleep(0.2)
    assert done, list(downloads.iterdir())
    with open(done[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file_name"], r["reference"]) for r in rows] == [("phantom-0042.png", "STUDY-42")]
    assert rows[0]["label"] == label
