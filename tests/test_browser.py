"""Browser test: start `python app.py` on a free local port, drive it in headless Chromium, save screenshots.

It uploads an example photo, types captions, runs Compare, checks both models' scores against the library's,
draws the embedding maps, and writes docs/screenshot-compare.png and docs/screenshot-embedding-map.png (the
README shows them). It needs Debian's chromium at /usr/bin/chromium and the playwright Python package; it
never downloads a browser.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from negclip.config import TrainConfig
from negclip.models import load_clip
from negclip.scoring import score_captions
from negclip.train import train
from negclip.tuning import load_adapter
from webapp.datasets import EXAMPLES_DIR, EXAMPLES_NEGATIONS
from webapp.models import BUNDLED_ADAPTER, negation_world_adapter_available

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 180
# Not the first example photo, which the page shows on load, so that a failed upload cannot pass unnoticed.
PHOTO = EXAMPLES_DIR / "000000190140.jpg"
CAPTIONS = [
    "A man and a dog on a small boat.",
    "A man on a small boat, but there is no dog.",
    "A man and a dog on a small boat, with no car in sight.",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with code {process.returncode} before serving:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served_app(tmp_path_factory):
    """Run app.py offline, as a first-time user would: the Hub model fails and the offline fallback serves.

    With the bundled negation-world adapter the app picks its own offline pair. Without it, the app gets a
    tiny-random adapter trained here for 3 steps, so the page still has a tuned model to compare with.
    """
    folder = tmp_path_factory.mktemp("browser")
    arguments = []
    if negation_world_adapter_available():
        model, adapter = "negation-world", BUNDLED_ADAPTER
    else:
        config = TrainConfig(data=str(EXAMPLES_NEGATIONS), model="tiny-random", output_dir=str(folder / "run"),
                             max_steps=3, batch_size=8, learning_rate=1e-3, device="cpu")
        model, adapter = "tiny-random", str(train(config).adapter_dir)
        arguments = ["--adapter", adapter]

    port = free_port()
    environment = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),  # app.py passes no port, so this checks that it honours the variable
        NEGCLIP_APP_WORK_DIR=str(folder / "sessions"),
    )
    log = folder / "app.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", *arguments], cwd=REPOSITORY, env=environment, stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, process, log)
        yield url, model, adapter
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def numbers_in(text: str) -> list[float]:
    return [float(token) for token in re.findall(r"^-?\d+\.\d+$", text, flags=re.MULTILINE)]


def test_compare_and_map_in_browser(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, model, adapter = served_app
    base = load_clip(model)
    expected = {
        "vanilla": score_captions(base, PHOTO, CAPTIONS, cache=None),
        "tuned": score_captions(load_adapter(base, adapter), PHOTO, CAPTIONS, cache=None),
    }
    docs = REPOSITORY / "docs"
    docs.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a new, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.goto(url)
            page.locator("#compare-button").wait_for(timeout=60_000)
            assert "Offline mode" in page.locator("#offline-notice").inner_text()

            # The page loads the first example photo and its captions; wait, so they do not replace ours.
            expect(page.locator("#captions textarea")).not_to_have_value("", timeout=30_000)
            page.locator("#photo-upload input[type=file]").set_input_files(str(PHOTO))
            expect(page.locator("#photo img")).to_have_attribute("src", re.compile(PHOTO.stem), timeout=30_000)
            page.locator("#captions textarea").fill("\n".join(CAPTIONS))
            page.locator("#truth label", has_text=CAPTIONS[1]).locator("input").uncheck()
            for caption in (CAPTIONS[0], CAPTIONS[2]):
                page.locator("#truth label", has_text=caption).locator("input").check()
            page.locator("#compare-button").click()
            expect(page.locator("#compare-scores")).to_contain_text("tuned cosine", timeout=60_000)
            expect(page.locator("#compare-scores")).to_contain_text(CAPTIONS[2], timeout=10_000)

            shown_numbers = numbers_in(page.locator("#compare-scores").inner_text())
            for label, scores in expected.items():
                for value in scores.cosine + scores.probability:
                    shown = any(abs(number - value) < 2e-4 for number in shown_numbers)
                    assert shown, f"{label} score {value:.4f} is not in the table"
            summary = page.locator("#compare-summary").inner_text()
            assert f"vanilla picks caption {expected['vanilla'].best + 1}" in summary
            assert f"tuned picks caption {expected['tuned'].best + 1}" in summary
            page.locator("#compare-plot .js-plotly-plot").wait_for(timeout=10_000)
            page.wait_for_timeout(1000)  # let plotly finish its first draw
            page.screenshot(path=str(docs / "screenshot-compare.png"), full_page=True)

            page.get_by_role("tab", name="Embedding map").click()
            page.locator("#map-button").click()
            page.get_by_text(re.compile("captions, each with its presence-negated")).wait_for(timeout=120_000)
            page.locator("#map-plot .js-plotly-plot").wait_for(timeout=10_000)
            page.wait_for_timeout(1000)  # let plotly finish its first draw
            page.screenshot(path=str(docs / "screenshot-embedding-map.png"), full_page=True)
        finally:
            context.close()

    assert (docs / "screenshot-compare.png").stat().st_size > 10_000
    assert (docs / "screenshot-embedding-map.png").stat().st_size > 10_000
