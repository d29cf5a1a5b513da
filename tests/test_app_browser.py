"""The Gradio app in a real headless Chromium (Debian's chromium + Playwright).

The set-up installs what is missing: ``apt-get install chromium`` and ``pip install playwright``
into this venv (never ``playwright install``: it downloads a browser). Without them - no network,
no root - the tests are skipped and say why. Screenshots go to tests/_artifacts/.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segkit.app.gradio_app import build_app  # noqa: E402

CHROMIUM = "/usr/lib/chromium/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "_artifacts"
pytestmark = [pytest.mark.filterwarnings("ignore:torch.meshgrid", "ignore::DeprecationWarning"),
              pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _ensure_browser():
    """None when Chromium and Playwright are usable (installing them if needed), else why not."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            return "Chromium is not installed and cannot be (needs apt-get as root)"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"installing Chromium failed: {e}"
            if proc.returncode != 0:
                return f"installing Chromium failed: {' '.join(cmd)}: {proc.stderr.strip()[-300:]}"
        if not os.path.exists(CHROMIUM):
            return f"apt-get installed chromium but {CHROMIUM} is missing"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "playwright"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return f"pip install playwright failed: {proc.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _ensure_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


UPLOAD = "#input-image input[data-testid=file-upload]"
CLASS_CELLS = '#instances [data-testid^="cell-"][data-testid$="-1"]'


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1150})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(UPLOAD, state="attached", timeout=60_000)
    return page


def table_classes(page):
    return [c.inner_text().strip() for c in page.query_selector_all(CLASS_CELLS)]


def test_upload_see_result_filter(browser, trained_mini_checkpoint, sample_data, tmp_path, serve_app):
    image = sorted((Path(sample_data) / "images").glob("*.jpg"))[0]
    (tmp_path / "not_an_image.jpg").write_text("hello")
    seg_app = build_app(trained_mini_checkpoint, device="cpu")
    model = seg_app.model
    with serve_app(seg_app) as url:
        page = open_page(browser, url)
        page.set_input_files(UPLOAD, str(image))
        page.wait_for_selector("#result-image img", timeout=60_000)
        page.wait_for_selector("#instances [data-testid=cell-0-1]", timeout=60_000)
        classes = table_classes(page)
        assert classes and set(classes) <= set(model.class_names)
        assert "instance(s) shown" in page.inner_text("#message")
        assert page.locator("#downloads").inner_text().count(".") >= 4  # four files listed
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_result.png"), full_page=True)
        assert model.calls == 1

        # the class filter redraws from the cache: rows of that class go, the model is not re-run
        hidden = classes[0]
        page.locator("#classes label", has_text=hidden).first.click()
        page.wait_for_function(
            f"""() => ![...document.querySelectorAll('{CLASS_CELLS}')]
                      .some(c => c.innerText.trim() === {hidden!r})""", timeout=30_000)
        assert len(table_classes(page)) == len(classes) - classes.count(hidden)
        assert model.calls == 1
        page.screenshot(path=str(ARTIFACTS / "app_filtered.png"), full_page=True)

        # a bad upload: a message on the page, and the app goes on
        page.set_input_files(UPLOAD, str(tmp_path / "not_an_image.jpg"))
        page.wait_for_function(
            "() => document.querySelector('#message').innerText.includes('Cannot use this upload')",
            timeout=30_000)
        page.set_input_files(UPLOAD, str(image))
        page.wait_for_function(
            "() => document.querySelector('#message').innerText.includes('instance(s) shown')",
            timeout=60_000)
        assert model.calls == 2

        # an example of the validation split runs too (the checkpoint's config names its data)
        if seg_app.examples:
            page.locator("#examples button").first.click()
            deadline = time.monotonic() + 60
            while model.calls < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert model.calls == 3
        page.close()


def test_page_without_checkpoint(browser, tmp_path, serve_app):
    seg_app = build_app(tmp_path / "output" / "model_final.pth")
    with serve_app(seg_app) as url:
        page = open_page(browser, url)
        page.wait_for_selector("#no-model", timeout=30_000)
        text = page.inner_text("#no-model")
        assert "No checkpoint" in text and "python train_net.py --config-file" in text
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_no_checkpoint.png"))
        page.close()
