"""The web UI of ``nmt-serve`` in headless Chromium (Debian's ``chromium``, driven by
playwright over the DevTools protocol): type a sentence, press Translate, read the
translation, placeholders highlighted in both boxes. Skipped without playwright or a
chromium binary (CI installs both: ``make install-browser``).

``PIPENMT_SCREENSHOT=1`` also writes the screenshot that is committed,
``docs/results/localisation/<machine>/serve_ui.png``; the test always writes one to its
temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'pipenmt[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install 'pipenmt[serve]'")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install 'pipenmt[browser]'")

from nmt.release.shipped import models_dir  # noqa: E402
from scripts.bench._serve import ServeProcess  # noqa: E402
from scripts.bench.common import results_for  # noqa: E402

MODEL = "gnmt-debian-en-de"
CHROMIUM = os.environ.get("PIPENMT_CHROMIUM") or shutil.which("chromium") or ""
SENTENCE = "Could not open file %s: %s"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM, reason="no chromium (apt-get install chromium)"),
    pytest.mark.skipif(
        not (models_dir() / MODEL / "model.pt").is_file(), reason=f"needs the shipped {MODEL}"
    ),
]


def test_type_translate_and_read_with_placeholders_highlighted(tmp_path: Path) -> None:
    with ServeProcess(f"checkpoint={MODEL}", "decode.quantize=int8", "train.threads=1") as server:
        want = httpx.post(
            server.url + "/translate", json={"q": SENTENCE, "source": "en", "target": "de"}
        ).json()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 560})
                errors: list[str] = []
                page.on("pageerror", lambda err: errors.append(str(err)))
                requests: list[str] = []
                page.on("request", lambda req: requests.append(req.url))
                page.goto(server.url + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                assert page.input_value("#source-lang") == "en"
                assert page.input_value("#target-lang") == "de"
                page.locator("#source").press_sequentially(SENTENCE)
                source_marks = page.locator("#source-marks mark.ph")
                source_marks.nth(1).wait_for(timeout=30_000)
                assert source_marks.all_inner_texts() == ["%s", "%s"]
                page.click("#translate")
                page.wait_for_function(
                    "document.getElementById('target').textContent.length > 0", timeout=60_000
                )
                target = page.locator("#target")
                assert target.inner_text() == want["translatedText"]
                marks = page.locator("#target mark.ph").all_inner_texts()
                assert marks == ["%s"] * want["translatedText"].count("%s")
                kept = "placeholders kept" if want["placeablesKept"] else "lost or repeated"
                assert kept in page.inner_text("#check")
                assert page.inner_text("#status") == ""
                shot = tmp_path / "serve_ui.png"
                page.screenshot(path=str(shot))
            finally:
                browser.close()
    assert not errors, errors
    assert all(u.startswith(server.url) for u in requests), requests  # nothing external
    assert 0 < shot.stat().st_size < 150_000
    if os.environ.get("PIPENMT_SCREENSHOT") == "1":
        committed = results_for("localisation", "serve_ui.png")
        committed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, committed)
