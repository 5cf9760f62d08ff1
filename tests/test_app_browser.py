"""`negclip app` in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium): the page's table
equals `negclip compare --json` for the same upload and captions, generation shows two images, a model that cannot
load says so in one line, and the server listens on 127.0.0.1 only.

Screenshots of each tab land in the test's temporary folder; with NEGCLIP_SCREENSHOT_DIR set they are copied there
too. The second model is a tiny random CLIP, or NEGCLIP_APP_SECOND_MODEL (e.g. the model `negclip demo` fine-tuned),
which is how the docs' screenshots are made (docs/app.md):

    negclip demo   # once: writes negclip-demo/model
    NEGCLIP_APP_SECOND_MODEL=local-dir:negclip-demo/model NEGCLIP_SCREENSHOT_DIR=docs/images \
        pytest tests/test_app_browser.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from negation_plugins.app.core import short_label
from negation_plugins.cli import cli
from negation_plugins.testing import tiny_model_dir
from negation_plugins.world.shipped import FOLDER

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
BASE = f"local-dir:{FOLDER}"
BAD = "nosuch-org/nosuch-model"  # a Hub name: accepted by the command line, fails (offline) when first used
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WAIT = 60
SCREENSHOT_ON_TIMEOUT = Path(os.environ.get("TMPDIR", "/tmp")) / "negclip-app-timeout.png"


def world_pipeline(out: Path) -> str:
    """A tiny random Stable Diffusion pipeline whose text slot fits the world's models (64 wide, 32 tokens)."""
    from transformers import CLIPTextModel

    from negation_plugins.testing import text_config, tiny_sd_pipeline
    from negation_plugins.tokenizer import clip_tokenizer

    pipe = tiny_sd_pipeline(cross_attention_dim=64)
    config = text_config(64)
    config.max_position_embeddings = 32
    pipe.text_encoder = CLIPTextModel(config).eval()
    pipe.tokenizer = clip_tokenizer(context_length=32)
    pipe.unet.register_to_config(sample_size=32)  # 32 px images
    pipe.save_pretrained(out)
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`negclip app` with the world's base model, a second tiny model, a bad name and a tiny SD pipeline."""
    tmp = tmp_path_factory.mktemp("app")
    second = os.environ.get("NEGCLIP_APP_SECOND_MODEL") or tiny_model_dir(tmp / "second", seed=1)
    if second.startswith("local-dir:"):
        second = f"local-dir:{Path(second.removeprefix('local-dir:')).resolve()}"
    pipeline = world_pipeline(tmp / "pipeline")
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        GRADIO_TEMP_DIR=str(tmp / "gradio"),
        OMP_NUM_THREADS="1",
    )
    command = [sys.executable, "-c", "from negation_plugins.cli import cli; cli()", "app", "--port", str(port)]
    for model in (second, BAD, BASE):  # the last one is the Generate tab's default encoder
        command += ["--model", model]
    log = open(tmp / "server.log", "w")
    process = subprocess.Popen([*command, "--pipeline", pipeline], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"negclip app did not start: {(tmp / 'server.log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield {"url": url, "port": port, "models": [second, BASE], "tmp": tmp}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
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
        "--window-size=1400,1100",
        f"--user-data-dir={server['tmp'] / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT)
    driver.get(server["url"])
    wait_for(driver, "#compare-button")  # the page's scripts have built it
    yield driver
    driver.quit()


def wait_for(driver, css: str, timeout: float = WAIT, text: str | None = None):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    try:
        if text is not None:
            wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
        return wait.until(expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)))
    except TimeoutException:
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        driver.save_screenshot(str(SCREENSHOT_ON_TIMEOUT))
        raise AssertionError(
            f"{css} not shown in {timeout} s; status line: {status!r}; see {SCREENSHOT_ON_TIMEOUT}"
        ) from None


def set_models(driver, wanted: list[str]) -> None:
    """Tick exactly ``wanted`` in the Models checkbox group."""
    from selenium.webdriver.common.by import By

    labels = {short_label(name) for name in wanted}
    for label in driver.find_elements(By.CSS_SELECTOR, "#models label"):
        box = label.find_element(By.CSS_SELECTOR, "input")
        if box.is_selected() != (label.text.strip() in labels):
            label.click()


def screenshot(driver, tmp: Path, name: str) -> None:
    path = tmp / f"app-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if os.environ.get("NEGCLIP_SCREENSHOT_DIR"):
        shutil.copyfile(path, Path(os.environ["NEGCLIP_SCREENSHOT_DIR"]) / path.name)


def test_binds_loopback_only(server):
    """Reachable at 127.0.0.1, refused at another loopback address (so it is not bound to every interface)."""
    socket.create_connection(("127.0.0.1", server["port"]), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", server["port"]), timeout=5)


def test_compare_table_equals_negclip_compare_json(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from negation_plugins.app.core import world_examples

    example = world_examples(1, tmp_path / "scene")[0]
    captions = [*example.captions, "a photo of a green arrow."]
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(example.image))
    box = browser.find_element(By.CSS_SELECTOR, "#captions textarea")
    box.clear()
    box.send_keys("\n".join(captions))
    set_models(browser, server["models"])
    browser.find_element(By.CSS_SELECTOR, "#compare-button").click()
    table = wait_for(browser, "#compare-table", timeout=120)

    texts = [cell.text for cell in table.find_elements(By.CSS_SELECTOR, "td.caption")]
    arguments = [*server["models"], "--image", str(example.image), "--json"]
    for caption in captions:
        arguments += ["--text", caption]
    result = CliRunner().invoke(cli, ["compare", *arguments])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.output)
    assert texts == expected["texts"] == captions
    for m, row in enumerate(expected["models"]):
        for kind, values in (("prob", row["probabilities"]), ("cosine", row["cosines"])):
            cells = table.find_elements(By.CSS_SELECTOR, f"td.{kind}[data-model='{m}']")
            assert [float(c.get_attribute("data-value")) for c in cells] == pytest.approx(values, abs=1e-6)
            assert [c.text.split()[0] for c in cells] == [f"{v:.4f}" for v in values]
        picked = [
            t for t, c in enumerate(table.find_elements(By.CSS_SELECTOR, f"td.prob[data-model='{m}']")) if "✔" in c.text
        ]
        assert picked == [row["argmax"]]
    wait_for(browser, "#chart img, #chart svg, #chart canvas")
    assert "negclip compare" in browser.find_element(By.CSS_SELECTOR, "#command").text
    screenshot(browser, server["tmp"], "compare")
    shutil.copyfile(server["tmp"] / "app-compare.png", tmp_path / "app-compare.png")


def test_bad_model_shows_one_line(server, browser):
    from selenium.webdriver.common.by import By

    set_models(browser, [BAD])
    browser.find_element(By.CSS_SELECTOR, "#compare-button").click()
    status = wait_for(browser, "#status .negclip-error", timeout=WAIT)
    assert status.text.startswith(f"Error: {BAD}:")
    assert "\n" not in status.text and "Traceback" not in status.text
    set_models(browser, server["models"])


def test_generate_shows_two_images(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == "Generate")
    tab.click()
    steps = wait_for(browser, "#steps input[type=number]")
    steps.clear()
    steps.send_keys("3")
    browser.find_element(By.CSS_SELECTOR, "#generate-button").click()
    stock = wait_for(browser, "#stock-image img", timeout=120)
    aware = wait_for(browser, "#aware-image img", timeout=120)
    assert stock.get_attribute("src") and aware.get_attribute("src")
    assert stock.get_attribute("src") != aware.get_attribute("src")
    wait_for(browser, "#status", text="seed 0")
    screenshot(browser, server["tmp"], "generate")
    shutil.copyfile(server["tmp"] / "app-generate.png", tmp_path / "app-generate.png")


def test_page_fetches_nothing_beyond_the_server(server, browser):
    """Every web request the page made (scripts, fonts, styles, images) went to the page's own server."""
    requested = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    web = {url for url in requested if url.startswith(("http:", "https:", "ws:", "wss:"))}
    assert web, "no requests logged"
    assert {url for url in web if not url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:"))} == set()
