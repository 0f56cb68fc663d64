"""The web page in a real headless Chromium (Debian's chromium and chromium-driver), against the real service."""

import shutil

import pytest
from conftest import Server, labelled_blobs_in_production

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (make test installs it)"),
]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    s = Server(labelled_blobs_in_production(tmp_path_factory.mktemp("page")))
    yield s
    s.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_a_person_draws_images_and_picks_a_seed(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(f"{page_server.url}/ui")
    wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "4 classes"))
    for field, value in (("n", "4"), ("seed", "7")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    Select(browser.find_element(By.ID, "label")).select_by_visible_text("upper")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images figure")) == 4)
    captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#images figcaption")]
    assert captions == ["seed 7 · upper", "seed 8 · upper", "seed 9 · upper", "seed 10 · upper"]
    widths = browser.execute_script("return [...document.querySelectorAll('#images img')].map(i => i.naturalWidth)")
    assert widths == [28, 28, 28, 28]  # real PNGs, decoded by the browser

    browser.find_elements(By.CSS_SELECTOR, "#images figure")[2].click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "9"
    assert "seed 9" in browser.find_element(By.ID, "status").text
    browser.save_screenshot(str(tmp_path / "page.png"))

    browser.find_element(By.ID, "n").clear()
    browser.find_element(By.ID, "n").send_keys("500")
    browser.find_element(By.ID, "go").click()
    assert browser.execute_script("return document.getElementById('n').validity.rangeOverflow")  # the page's limit
    assert "seed 9" in browser.find_element(By.ID, "status").text  # nothing was sent
    browser.execute_script("document.getElementById('n').removeAttribute('max')")
    browser.find_element(By.ID, "go").click()  # past the page, the server's refusal reaches the person
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "400"))
    assert "less than or equal to 64" in browser.find_element(By.ID, "status").text
