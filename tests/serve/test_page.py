"""The web page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``), driven by selenium, against the server started as a user starts it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.cli.conftest import make_image
from tests.serve.conftest import READ_WRITE_KEY, png_bytes

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (BROWSER and DRIVER),
    reason="no Chromium here: apt-get install chromium chromium-driver (.ci/run does)",
)
# Where to keep the screenshot besides the test's own folder (the README's is made this way).
SCREENSHOT = os.environ.get("KSHOT_PAGE_SCREENSHOT")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    profile = tempfile.mkdtemp(prefix="kshot-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, seconds=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(condition)


def _file_input(driver, element_id):
    element = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].hidden = false", element)
    return element


def test_ask_about_a_photo_then_enroll_and_forget_a_class(http_server, browser, tmp_path):
    driver = browser
    driver.get(http_server.url + "/")
    # the server has keys: the page says so until the key is given
    _wait(driver, lambda d: "API key" in d.find_element("id", "classes").text)
    key = driver.find_element("id", "api-key")
    key.send_keys(READ_WRITE_KEY)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    _wait(driver, lambda d: "blob" in d.find_element("id", "classes").text)

    # ask about a photo: the answer, its scores and the nearest enrolled photos
    photo = make_image(tmp_path / "question.png", "blob", 123, size=64)
    _file_input(driver, "file").send_keys(str(photo))
    label = _wait(driver, lambda d: d.find_elements("id", "answer-label"))[0]
    assert label.text == "blob"
    answer = driver.find_element("id", "answer")
    assert "bars" in answer.text and "corner" in answer.text and "confidence" in answer.text
    _wait(
        driver,
        lambda d: all(
            img.get_attribute("src")
            for img in d.find_elements("css selector", "#answer .thumbs img")
        ),
    )
    thumbs = driver.find_elements("css selector", "#answer .thumbs img")
    assert len(thumbs) == 4
    _wait(
        driver,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#answer .thumbs img')]"
            ".every(i => i.naturalWidth > 0)"
        ),
    )
    driver.save_screenshot(str(tmp_path / "page.png"))
    if SCREENSHOT:
        shutil.copyfile(tmp_path / "page.png", SCREENSHOT)

    # enroll a class from two photos
    photos = [make_image(tmp_path / f"new{i}.png", "corner", 600 + i, size=40) for i in range(2)]
    driver.find_element("id", "enroll-label").send_keys("Page class")
    driver.find_element("id", "enroll-files").send_keys("\n".join(map(str, photos)))
    driver.find_element("id", "enroll-button").click()
    _wait(
        driver,
        lambda d: (
            "Enrolled 2 photo(s) into Page class" in d.find_element("id", "enroll-result").text
        ),
    )
    _wait(driver, lambda d: "Page class" in d.find_element("id", "classes").text)

    # browse it, then forget it
    buttons = driver.find_elements("css selector", "#classes button.link")
    next(b for b in buttons if b.text == "Page class").click()
    _wait(driver, lambda d: len(d.find_elements("css selector", "#class-view .thumbs img")) == 2)
    driver.find_element("id", "forget-button").click()
    driver.switch_to.alert.accept()
    _wait(driver, lambda d: "Forgot Page class" in d.find_element("id", "class-view").text)
    _wait(driver, lambda d: "Page class" not in d.find_element("id", "classes").text)
    assert Path(tmp_path / "page.png").stat().st_size > 10_000


def test_unknown_is_said_plainly(http_server, browser, tmp_path):
    driver = browser
    driver.get(http_server.url + "/")
    key = driver.find_element("id", "api-key")
    key.send_keys(READ_WRITE_KEY)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    _wait(driver, lambda d: "blob" in d.find_element("id", "classes").text)
    # noise: under the library's own "unknown" threshold
    unsure = tmp_path / "unsure.png"
    unsure.write_bytes(png_bytes("noise", 5))
    _file_input(driver, "file").send_keys(str(unsure))
    label = _wait(driver, lambda d: d.find_elements("id", "answer-label"))[0]
    assert label.text == "Unknown: no class is similar enough"
    assert "unknown" in label.get_attribute("class")


def test_the_api_documentation_renders_offline(http_server, browser):
    driver = browser
    driver.get(http_server.url + "/docs")
    # Swagger UI built the page from the installed files and the API's own OpenAPI document
    _wait(driver, lambda d: "/v1/libraries/{name}/query" in d.find_element("tag name", "body").text)
    sources = driver.execute_script(
        "return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href)"
    )
    assert sources and all(s.startswith(http_server.url) for s in sources), sources
