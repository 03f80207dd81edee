"""The serve page in a real browser: Debian's headless chromium driven by Selenium (marker `browser`).

`.ci/run` installs `chromium` and `chromium-driver`; the `browser` and `screenshot` fixtures are in
conftest.py. Set BONENET_SCREENSHOTS=DIR to keep the screenshots (the README's picture of the
serve page comes from here).
"""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.browser


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(full_run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", "serve", "--models-dir", str(full_run), "--port",
                             str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/api/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {proc.stdout.read()}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("serve did not answer /api/health within 180 s")
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


def test_the_serve_page_reads_an_uploaded_study(browser, screenshot, server, index):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    images = index.images[(index.images.part == "XR_WRIST") & (index.images.split == "valid")]
    study = sorted(images.groupby("study").path.apply(list).values, key=len)[-1]
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: "part models" in d.find_element(By.ID, "run").text)
    browser.find_element(By.ID, "files").send_keys("\n".join(str(Path(p).resolve()) for p in study))
    WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "results")))
    part = browser.find_element(By.ID, "part").text
    decision = browser.find_element(By.ID, "decision").text
    assert part in {"elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist"}
    assert decision in {"NORMAL", "ABNORMAL"}
    overlays = browser.find_elements(By.CSS_SELECTOR, "#views img.overlay")
    assert len(overlays) == len(study)
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
               for img in overlays)
    assert "Not for clinical use" in browser.find_element(By.TAG_NAME, "body").text
    shot = screenshot(browser, "serve_page.png")
    assert shot.stat().st_size > 10_000


def test_the_serve_page_says_what_is_wrong_with_a_bad_upload(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    browser.get(url + "/")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "notes.txt: not a PNG, JPEG or DICOM image"
