"""The gallery in headless Chromium (Debian chromium + chromium-driver, driven by selenium).

Screenshots go to ``test-artefacts/api/``; ``gallery-search.png`` and ``asset-page.png`` are
copied by hand into ``docs/images/`` for the README (tests never write tracked files).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from tests.api.conftest import ARTEFACTS, manifest_yaml

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("headless Chromium is missing: apt-get install -y chromium chromium-driver "
                    "(scripts/install.sh test does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # WebGL on the CPU (SwiftShader) for the 3D viewer, since there is no GPU.
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _wait(condition, what: str, timeout_s: float = WAIT_S):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page is still changing
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _log_in(browser, api_server) -> None:  # noqa: ANN001
    browser.get(api_server.url + "/")
    browser.execute_script("localStorage.setItem('foundry3d-token', arguments[0])",
                           api_server.tokens["write"])


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").resize((128, 96))
    return len(set(image.tobytes()[i:i + 3] for i in range(0, 128 * 96 * 3, 3)))


def test_the_gallery_finds_an_asset_and_its_page_renders_the_glb(
    browser, api_server, produced_asset
):
    from selenium.webdriver.common.by import By

    _log_in(browser, api_server)
    browser.get(api_server.url + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys("wooden crate")
    browser.find_element(By.CSS_SELECTOR, "#search button[type=submit]").click()
    selector = ('#results[data-query="wooden crate"] '
                f'li.card[data-asset="{produced_asset["asset_id"]}"]')
    card = _wait(lambda: browser.find_element(By.CSS_SELECTOR, selector), "the asset's card")
    _wait(lambda: browser.execute_script(
        "const i = arguments[0].querySelector('img'); return i && i.complete && i.naturalWidth",
        card), "the card's thumbnail")
    browser.save_screenshot(str(ARTEFACTS / "gallery-search.png"))

    card.find_element(By.TAG_NAME, "a").click()
    viewer = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "model-viewer"),
                   "the model-viewer element")
    _wait(lambda: browser.execute_script("return arguments[0].loaded === true", viewer),
          "the GLB to load in the viewer")
    # Rendered: the viewer's pixels are more than its flat background.
    _wait(lambda: _distinct_colours(viewer.screenshot_as_png) > 20, "a rendered model")
    browser.save_screenshot(str(ARTEFACTS / "asset-page.png"))
    assert browser.find_element(By.CSS_SELECTOR, "#bundle img").get_attribute("naturalWidth")
    assert browser.find_elements(By.CSS_SELECTOR, "#stages tbody tr")


def test_the_batch_page_retries_a_failed_asset(browser, api_server):
    from selenium.webdriver.common.by import By

    reply = api_server.request("POST", "/v1/jobs", manifest_yaml(
        [{"prompt": "a round rubber ball to cancel", "seed": 11}]),
        content_type="application/x-yaml")
    batch_id = reply.json()["batch_id"]
    api_server.request("POST", f"/v1/jobs/{batch_id}/cancel")
    api_server.wait_job(batch_id)

    _log_in(browser, api_server)
    browser.get(f"{api_server.url}/batches/{batch_id}")
    button = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "button.retry"),
                   "the retry button of the failed asset")
    browser.save_screenshot(str(ARTEFACTS / "batch-failed.png"))
    button.click()
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, "tr[data-asset]")
          .get_attribute("data-state") != "failed", "the asset to leave the failed state")
    job = api_server.wait_job(batch_id)
    assert job["assets"][0]["state"] == "succeeded", api_server.log()
    browser.get(f"{api_server.url}/batches/{batch_id}")
    _wait(lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-state="succeeded"]'),
          "the batch page to show the retried asset done")
    browser.save_screenshot(str(ARTEFACTS / "batch-retried.png"))


def test_without_model_viewer_the_asset_page_shows_the_preview_and_says_why(
    browser, api_server, produced_asset, tmp_path
):
    from selenium.webdriver.common.by import By

    from tests.api.conftest import start_server, stop_server

    # A second server on the same database, with an empty npm folder.
    env = dict(api_server.env, FOUNDRY_API_VENDOR_DIR=str(tmp_path / "no-node-modules"))
    server = start_server(env, tmp_path)
    try:
        browser.get(server.url + "/")
        browser.execute_script("localStorage.setItem('foundry3d-token', arguments[0])",
                               api_server.tokens["reader"])
        browser.get(f"{server.url}/assets/{produced_asset['asset_id']}")
        notice = _wait(lambda: browser.find_element(By.ID, "viewer-notice"), "the notice")
        assert "model-viewer is not installed" in notice.text
        preview = browser.find_element(By.CSS_SELECTOR, "#viewer img")
        _wait(lambda: preview.get_attribute("naturalWidth") not in (None, "0"), "the preview")
        assert not browser.find_elements(By.CSS_SELECTOR, "model-viewer")
    finally:
        stop_server(server)
