"""The web page in a real headless Chromium (Debian's chromium and chromium-driver), against the real service."""

import base64
import io
import json
import re
import shutil

import httpx
import pytest
from conftest import CLASSES, LabelledBlobs, Server, SquareJudge, Tinted, promote
from PIL import Image

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (make test installs it)"),
]
# The tinted line's gate headline (in its manifest, as retraining writes it) and the figures of its two promotions.
GATE = {"decision": "pass", "reasons": ["every check passed"], "fid": 9.05, "kid": 0.718,
        "feature_judge_accuracy": 0.579, "pixel_judge_accuracy": 0.59}  # fmt: skip
PROMOTIONS = [{"fid": 14.2, "feature_judge_accuracy": 0.66, "pixel_judge_accuracy": 0.61},
              {"fid": 9.05, "feature_judge_accuracy": 0.579, "pixel_judge_accuracy": 0.59}]  # fmt: skip
WINDOW = (1200, 1500)  # tall enough that the whole page is on one screenshot


def two_lines(home):
    """The default line (LabelledBlobs with a discriminator, so DRS can be asked for; promoted without a gate report)
    and "tinted" (RGB 16x16, unconditional, no discriminator), promoted twice with a gate report that judged its
    file, the figures of each promotion in its history."""
    from release.registry import Registry
    from service.manifest import ImageSpec, read_manifest, write_manifest
    from training.export import export_module

    export_module(LabelledBlobs(), home / "labelled", latent_dim=800, image=ImageSpec(height=28, width=28, channels=1),
                  class_names=CLASSES, discriminator=SquareJudge())  # fmt: skip
    promote(home, home / "labelled")
    folder = home / "tinted"
    export_module(Tinted(), folder, latent_dim=300, image=ImageSpec(height=16, width=16, channels=3))
    manifest = read_manifest(folder)
    write_manifest(folder, manifest.model_copy(update={"gate": GATE}))
    (folder / "report.json").write_text(json.dumps({"decision": "pass", "candidate": {"sha256": manifest.sha256}}))
    registry = Registry(home, line="tinted")
    for figures in PROMOTIONS:
        registry.promote(registry.add_candidate(folder, metadata=figures).version)
    return home


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    s = Server(two_lines(tmp_path_factory.mktemp("page")))
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
                 "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def fetched(browser, url: str) -> bytes:
    """The bytes behind a link's href (a data: or blob: URL), as the browser would save them."""
    script = """const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((b) => {
          let s = ""; for (const c of new Uint8Array(b)) s += String.fromCharCode(c); done(btoa(s));
        });"""
    return base64.b64decode(browser.execute_async_script(script, url))


def xmp_provenance(data: bytes) -> dict:
    """The provenance JSON in a WebP's XMP packet (``service.formats``)."""
    from xml.sax.saxutils import unescape

    found = re.search(rb"<ganserve:provenance>(.*?)</ganserve:provenance>", data, re.S)
    assert found, "no provenance in the file"
    return json.loads(unescape(found.group(1).decode()))


def seeds(browser) -> list[int]:
    """The seeds of the figures on the page, read in one go (the page replaces them as answers arrive)."""
    return browser.execute_script("return [...document.querySelectorAll('#images figure')].map(f => +f.dataset.seed)")


def figures(browser) -> list:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, "#images figure")


def test_a_person_draws_images_and_picks_a_seed(page_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    version = httpx.get(f"{page_server.url}/info").json()["model_version"]
    wait = WebDriverWait(browser, 20)
    browser.get(f"{page_server.url}/ui")
    wait.until(lambda d: len(seeds(d)) == 16)  # images at once, nothing pressed
    assert "4 classes" in browser.find_element(By.ID, "model").text
    for field, value in (("n", "4"), ("seed", "7")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    Select(browser.find_element(By.ID, "label")).select_by_visible_text("upper")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: seeds(d) == [7, 8, 9, 10])
    captions = [f.text.split("\n") for f in browser.find_elements(By.CSS_SELECTOR, "#images figcaption")]
    assert captions == [[f"seed {s} · upper", f"{version} png"] for s in (7, 8, 9, 10)]
    widths = browser.execute_script("return [...document.querySelectorAll('#images img')].map(i => i.naturalWidth)")
    assert widths == [28, 28, 28, 28]  # real PNGs, decoded by the browser

    # the download is the file as the server sent it, its provenance inside
    link = browser.find_element(By.CSS_SELECTOR, "#images figure a[download]")
    assert link.get_attribute("download") == "seed-7.png"
    saved = Image.open(io.BytesIO(fetched(browser, link.get_attribute("href"))))
    mark = json.loads(saved.text["ganserve"])
    assert (mark["seed"], mark["label"], mark["model_version"]) == (7, "upper", version)

    figures(browser)[2].click()
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "9"
    assert "seed 9" in browser.find_element(By.ID, "status").text

    browser.find_element(By.ID, "n").clear()
    browser.find_element(By.ID, "n").send_keys("500")
    browser.find_element(By.ID, "go").click()
    assert browser.execute_script("return document.getElementById('n').validity.rangeOverflow")  # the page's limit
    assert "seed 9" in browser.find_element(By.ID, "status").text  # nothing was sent
    browser.execute_script("document.getElementById('n').removeAttribute('max')")
    browser.find_element(By.ID, "go").click()  # past the page, the server's refusal reaches the person
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "400"))
    assert "less than or equal to 64" in browser.find_element(By.ID, "status").text

    # DRS: the line has a discriminator, plain by default (no gate verdict); each caption gives the image's D score
    sampler = Select(browser.find_element(By.ID, "sampler"))
    assert sampler.first_selected_option.get_attribute("value") == "plain" and sampler.options[1].is_enabled()
    assert browser.find_element(By.ID, "sampler").is_enabled()
    browser.find_element(By.ID, "n").clear()
    browser.find_element(By.ID, "n").send_keys("4")
    Select(browser.find_element(By.ID, "label")).select_by_visible_text("top-left")
    sampler.select_by_value("drs")
    browser.find_element(By.ID, "go").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "by DRS"))
    drs = [f.text.split("\n")[-1] for f in browser.find_elements(By.CSS_SELECTOR, "#images figcaption")]
    assert len(drs) == 4 and all(re.fullmatch(r"D 1\.39 · \d+ candidates?( fallback)?", c) for c in drs), drs


def test_a_person_compares_lines_walks_between_seeds_and_saves_files(page_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    browser.get(f"{page_server.url}/ui")
    wait.until(lambda d: len(seeds(d)) == 16)
    picker = Select(browser.find_element(By.ID, "line"))
    assert [o.get_attribute("value") for o in picker.options] == ["default", "tinted"]
    assert picker.first_selected_option.get_attribute("value") == "default"
    assert "not judged" in browser.find_element(By.ID, "gate").text
    assert "1 promotion(s), none with gate figures" in browser.find_element(By.ID, "history").text

    picker.select_by_value("tinted")
    wait.until(EC.text_to_be_present_in_element((By.ID, "model"), "16\N{MULTIPLICATION SIGN}16 colour, unconditional"))
    widths = "return [...document.querySelectorAll('#images img')].map(i => i.naturalWidth)"
    wait.until(lambda d: d.execute_script(widths) == [16] * 16)
    colour = """const c = document.createElement('canvas'), img = document.querySelector('#images img');
        c.width = c.height = 16; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const p = g.getImageData(0, 0, 16, 16).data;
        for (let i = 0; i < p.length; i += 4) if (p[i] !== p[i + 1]) return true; return false;"""
    assert browser.execute_script(colour)  # RGB: the tinted square's red differs from its green
    gate = browser.find_element(By.ID, "gate").text
    assert all(s in gate for s in ("decision pass", "FID 9.05", "KID 0.718", "0.579", "0.590")), gate
    assert not browser.find_element(By.ID, "sampler").is_enabled()  # no discriminator: plain only, and it says so
    assert "no discriminator" in browser.find_element(By.ID, "sampler-note").text
    # a gate report that also judged DRS: its figures beside plain sampling's, and the verdict
    drs = {"verdict": "helps", "sampler": "drs", "fid": {"plain": 9.05, "drs": 8.1, "difference": -0.95,
           "ci95": [-1.4, -0.5]}, "feature_judge_accuracy": {"plain": 0.579, "drs": 0.561},
           "pixel_judge_accuracy": {"plain": 0.59, "drs": 0.58}, "coverage": {"plain": 0.81, "drs": 0.84},
           "max_candidates": 16, "candidates_per_image": 2.03, "fallback_share": 0.004}  # fmt: skip
    browser.execute_script("showGate(arguments[0])", {**GATE, "drs": drs})
    rows = browser.find_element(By.ID, "gate-drs").text.splitlines()
    assert rows[1:] == [
        "FID 9.05 8.10",
        "feature judge accuracy 0.579 0.561",
        "pixel judge accuracy 0.590 0.580",
        "coverage 0.810 0.840",
        "candidates per image 1 2.03 (at most 16)",
        "fallbacks — 0.4%",
    ], rows
    assert "verdict: helps" in browser.find_element(By.ID, "gate").text
    browser.execute_script("showGate(arguments[0])", GATE)  # the line's own report again, for the screenshot below
    # the history: one marker per promotion in each chart, the current (last) one marked
    for series in ("fid", "feature_judge_accuracy", "pixel_judge_accuracy"):
        marks = browser.find_elements(By.CSS_SELECTOR, f"#history svg .{series}")
        assert [m.get_attribute("class") for m in marks] == [series, f"{series} current"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history svg circle.fid")) == len(PROMOTIONS)
    # one promotion still draws: its point in the middle of the axes, not at NaN or off the chart
    one = browser.execute_script("""const d = document.createElement('div');
        d.innerHTML = historyCharts([{version: 'v1', created: 'now', decision: 'pass', current: true,
                                      fid: 3, feature_judge_accuracy: 0.5, pixel_judge_accuracy: 0.6}]);
        return [...d.querySelectorAll('circle')].map(c => [+c.getAttribute('cx'), +c.getAttribute('cy')]);""")
    assert len(one) == 2 and all(20 < x < 300 and 20 < y < 130 for x, y in one), one

    # the walk through the first three seeds, played from a PNG strip: 8 frames a step, 2 steps, plus the last key
    keys = seeds(browser)[:3]
    walk = "const c = document.getElementById('walk'); return [c.dataset.frames, c.width, c.height]"
    wait.until(lambda d: d.execute_script(walk) == ["17", 16, 16])  # the tinted line's walk, 16x16 frames
    assert browser.find_element(By.ID, "keys").get_attribute("value") == ",".join(map(str, keys))
    browser.find_element(By.ID, "play").click()  # it plays on its own; pause it
    assert browser.find_element(By.ID, "play").get_attribute("aria-pressed") == "false"
    canvas = "return document.getElementById('walk').toDataURL()"
    browser.find_element(By.ID, "frame").send_keys(Keys.HOME)
    first = browser.execute_script(canvas)
    browser.find_element(By.ID, "frame").send_keys(Keys.END)
    assert browser.find_element(By.ID, "walk").get_attribute("data-frame") == "16"
    assert browser.execute_script(canvas) != first  # the last key's image, not the first's

    # the screenshot: the page's parts are drawn where they should be, not blank
    shot = tmp_path / "page.png"
    browser.save_screenshot(str(shot))
    image = Image.open(shot).convert("RGB")
    assert image.size == tuple(browser.execute_script("return [innerWidth, innerHeight]"))
    for selector in ("#images", "#history svg", "#walk"):
        box = browser.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return [r.left, r.top, r.right, r.bottom].map(Math.round)", selector)  # fmt: skip
        assert box[2] <= image.width and box[3] <= image.height, (selector, box, image.size)
        region = image.crop(box)
        assert len(region.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 8, f"{selector} is blank"

    # the walk's animated WebP, fetched when its link is pressed, carries the walk's provenance
    link = browser.find_element(By.ID, "walk-download")
    link.click()
    wait.until(lambda d: link.get_attribute("href").startswith("blob:"))
    webp = fetched(browser, link.get_attribute("href"))
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    mark = xmp_provenance(webp)
    assert (mark["endpoint"], mark["model"], mark["seeds"], mark["frames"]) == ("/interpolate", "tinted", keys, 17)
    saved = tmp_path / "downloads" / f"walk-{'-'.join(map(str, keys))}.webp"
    wait.until(lambda d: saved.is_file() and saved.read_bytes() == webp)  # and the browser saved those very bytes

    # the format on the form is the format of the files
    browser.find_element(By.ID, "n").clear()
    browser.find_element(By.ID, "n").send_keys("2")
    Select(browser.find_element(By.ID, "format")).select_by_visible_text("webp")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: len(seeds(d)) == 2)
    link = browser.find_element(By.CSS_SELECTOR, "#images figure a[download]")
    seed = seeds(browser)[0]
    assert link.get_attribute("download") == f"seed-{seed}.webp"
    webp = fetched(browser, link.get_attribute("href"))
    mark = xmp_provenance(webp)
    assert webp[8:12] == b"WEBP" and (mark["seed"], mark["model"]) == (seed, "tinted")
