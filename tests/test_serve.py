"""``nmt-serve`` through the real command (a child process on a free port) with the shipped
model: LibreTranslate's API, every bad request a 4xx with one line while the server keeps
answering, concurrent requests batched and each given its own answer, 503 when the queue is
full, and a clean stop on SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'pipenmt[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install 'pipenmt[serve]'")
httpx = pytest.importorskip("httpx")

from nmt.config import DecodeConfig, compose_config, from_dict  # noqa: E402
from nmt.errors import UserError  # noqa: E402
from nmt.release.shipped import models_dir, resolve_checkpoint, tuned_decode  # noqa: E402
from nmt.serve.command import check_settings  # noqa: E402
from nmt.translator import Translator  # noqa: E402
from scripts.bench._serve import CORPUS, ServeProcess, read_lines  # noqa: E402
from scripts.bench.common import child_env, nmt_command  # noqa: E402

MODEL = "gnmt-debian-en-de"
pytestmark = pytest.mark.skipif(
    not (models_dir() / MODEL / "model.pt").is_file(), reason=f"needs the shipped {MODEL}"
)
HTML = 'Open the <a href="https://example.org/">manual</a> for details.'
ENTITIES = "Tom &amp; Jerry &lt;3"


# int8 as the shipped models' cards say (auto would calibrate, per thread count)
INT8 = "decode.quantize=int8"


@pytest.fixture(scope="module")
def translator() -> Translator:
    """The model as the servers of these tests decode it: its own settings, int8."""
    tuned = tuned_decode(resolve_checkpoint(MODEL)[0])
    return Translator(MODEL, dataclasses.replace(from_dict(DecodeConfig, tuned), quantize="int8"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with ServeProcess(f"checkpoint={MODEL}", INT8, "train.threads=1") as proc:
        yield proc


def post(url: str, doc: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(url + "/translate", json=doc, timeout=120, **kw)


def one_line_error(r: httpx.Response, status: int, needle: str = "") -> None:
    """``r`` is ``status`` with ``{"error": "<one line containing needle>"}``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "\n" not in r.text.strip()
    doc = r.json()
    assert list(doc) == ["error"] and isinstance(doc["error"], str) and doc["error"]
    assert "\n" not in doc["error"] and needle in doc["error"], doc


def test_serve_is_an_installed_command() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("nmt-serve") == "nmt.cli:serve_main"


def test_languages_health_and_page(server: ServeProcess) -> None:
    langs = httpx.get(server.url + "/languages").json()
    assert langs == [{"code": "en", "name": "en", "targets": ["de"]}]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL
    assert health["languages"] == ["en-de"] and health["queue"]["max"] == 256
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="translate"' in page.text and "http" not in page.text.split("<script>")[0]
    settings = httpx.get(server.url + "/frontend/settings").json()
    assert settings["charLimit"] == 5000 and settings["keyRequired"] is False


def test_translate_string_list_form_and_multipart(
    server: ServeProcess, translator: Translator
) -> None:
    texts = ["Could not open file %s: %s", "This package contains the documentation."]
    want = [h[0] for h in translator.translate(texts)]
    r = post(server.url, {"q": texts[0], "source": "en", "target": "de"})
    assert r.status_code == 200
    assert r.json() == {"translatedText": want[0].text, "placeablesKept": want[0].placeables_ok}
    r = post(server.url, {"q": texts, "source": "en", "target": "de"})
    assert r.json()["translatedText"] == [w.text for w in want]
    assert r.json()["placeablesKept"] == [w.placeables_ok for w in want]
    form = {"q": texts[1], "source": "en", "target": "de"}
    assert httpx.post(server.url + "/translate", data=form).json()["translatedText"] == want[1].text
    repeated = httpx.post(server.url + "/translate", data={**form, "q": texts})
    assert repeated.json()["translatedText"] == [w.text for w in want]
    parts = {k: (None, v) for k, v in form.items()}
    multipart = httpx.post(server.url + "/translate", files=parts)
    assert multipart.json()["translatedText"] == want[1].text
    auto = post(server.url, {"q": texts[1], "source": "auto", "target": "de"}).json()
    assert auto["translatedText"] == want[1].text
    assert auto["detectedLanguage"] == {"language": "en", "confidence": 0.0, "assumed": True}
    empty_one = post(server.url, {"q": ["", texts[1]], "source": "en", "target": "de"})
    assert empty_one.json()["translatedText"] == ["", want[1].text]


def test_html_keeps_tags_and_entities(server: ServeProcess, translator: Translator) -> None:
    r = post(server.url, {"q": [HTML, ENTITIES], "source": "en", "target": "de", "format": "html"})
    assert r.status_code == 200
    out = r.json()["translatedText"]
    assert out == [h[0].text for h in translator.translate([HTML, ENTITIES])]
    assert r.json()["placeablesKept"] == [True, True]
    for tag in ('<a href="https://example.org/">', "</a>"):
        assert out[0].count(tag) == 1
    assert "&amp;" in out[1] and "&lt;" in out[1]  # not unescaped (LibreTranslate does)


def test_alternatives(server: ServeProcess, translator: Translator) -> None:
    text = "This package contains the documentation."
    want = [t.text for t in translator.translate([text], n_best=3)[0]]
    r = post(server.url, {"q": text, "source": "en", "target": "de", "alternatives": 2})
    assert r.json()["translatedText"] == want[0] and r.json()["alternatives"] == want[1:]
    r = post(server.url, {"q": [text], "source": "en", "target": "de", "alternatives": "1"})
    two = [t.text for t in translator.translate([text], n_best=2)[0]]  # n-best 2 stops sooner
    assert r.json()["alternatives"] == [two[1:]]
    r = post(server.url, {"q": text, "source": "en", "target": "de", "alternatives": 99})
    assert len(r.json()["alternatives"]) == translator.decode.beam_size - 1  # capped


BAD_JSON = [
    ({"source": "en", "target": "de"}, 400, "missing q"),
    ({"q": "", "source": "en", "target": "de"}, 400, "missing q"),
    ({"q": [], "source": "en", "target": "de"}, 400, "missing q"),
    ({"q": [1, "a"], "source": "en", "target": "de"}, 400, "q must hold strings"),
    ({"q": {"a": 1}, "source": "en", "target": "de"}, 400, "q must be a string or a list"),
    ({"q": "Hello", "target": "de"}, 400, "missing source"),
    ({"q": "Hello", "source": "en"}, 400, "missing target"),
    ({"q": "Hello", "source": "en", "target": "fr"}, 400, "en-fr is not a direction"),
    ({"q": "Hello", "source": "xx", "target": "de"}, 400, "xx-de is not a direction"),
    ({"q": "Hello", "source": "en", "target": "de", "format": "pdf"}, 400, "format 'pdf'"),
    ({"q": "Hello", "source": "en", "target": "de", "alternatives": -1}, 400, ">= 0"),
    ({"q": "Hello", "source": "en", "target": "de", "alternatives": "x"}, 400, "number"),
    ({"q": "x" * 5001, "source": "en", "target": "de"}, 413, "exceeds the limit (5000)"),
    ({"q": ["x"] * 257, "source": "en", "target": "de"}, 413, "257 texts"),
    ([1, 2], 400, "expected a JSON object"),
]


@pytest.mark.parametrize(("doc", "status", "needle"), BAD_JSON)
def test_bad_requests_are_one_line_4xx(
    server: ServeProcess, doc: Any, status: int, needle: str
) -> None:
    one_line_error(post(server.url, doc), status, needle)
    assert httpx.get(server.url + "/health").status_code == 200


def test_bad_bodies_methods_and_paths(server: ServeProcess) -> None:
    json_type = {"Content-Type": "application/json"}
    url = server.url + "/translate"
    one_line_error(httpx.post(url, content=b'{"q": "a", ', headers=json_type), 400, "malformed")
    one_line_error(httpx.post(url, content=b"\xff\xfe{}", headers=json_type), 400, "UTF-8")
    big = json.dumps({"q": "x" * 200_000, "source": "en", "target": "de"})
    one_line_error(httpx.post(url, content=big, headers=json_type), 413, "the body exceeds")
    chunked = iter([big[:100_000].encode(), big[100_000:].encode()])  # no Content-Length
    one_line_error(httpx.post(url, content=chunked, headers=json_type), 413, "the body exceeds")
    one_line_error(httpx.get(url), 405)
    one_line_error(httpx.get(server.url + "/nothing"), 404)
    one_line_error(httpx.post(url, data={"q": "Hello", "source": "en"}), 400, "missing target")
    ok = post(server.url, {"q": "Hello", "source": "en", "target": "de"})
    assert ok.status_code == 200 and server.proc.poll() is None


def test_concurrent_requests_batched_each_its_own_answer(
    server: ServeProcess, translator: Translator
) -> None:
    lines = read_lines(CORPUS, 32, 0)
    alone = [translator.translate([x])[0][0].text for x in lines]
    batched = [h[0].text for h in translator.translate(lines)]
    before = httpx.get(server.url + "/health").json()
    barrier = threading.Barrier(16)

    def client(k: int) -> list[tuple[int, str]]:
        out = []
        with httpx.Client(base_url=server.url, timeout=120) as c:
            barrier.wait()
            for i in range(k, len(lines), 16):
                r = c.post("/translate", json={"q": lines[i], "source": "en", "target": "de"})
                assert r.status_code == 200, r.text
                out.append((i, r.json()["translatedText"]))
        return out

    with ThreadPoolExecutor(16) as pool:
        answers = [a for part in pool.map(client, range(16)) for a in part]
    after = httpx.get(server.url + "/health").json()
    assert sorted(i for i, _ in answers) == list(range(len(lines)))
    for i, text in answers:  # a sentence's own answer: alone or in a batch (same for most)
        assert text in (alone[i], batched[i]), (i, text)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == len(lines) and batches < requests / 2, (requests, batches)
    assert after["largest_batch"] > 1


def test_api_key_full_queue_and_limits() -> None:
    """A key-protected server whose worker waits 1.5 s for a batch to fill: a second request
    that would overflow max_queue=4 is a 503 while the first waits, and gets its answer."""
    overrides = [f"checkpoint={MODEL}", INT8, "api_key=s3cret", "serve.max_queue=4",
                 "serve.batch_wait_ms=1500", "serve.max_chars=200", "train.threads=1"]  # fmt: skip
    with ServeProcess(*overrides) as proc:
        req = {"q": ["Hello", "World", "Yes"], "source": "en", "target": "de"}
        one_line_error(post(proc.url, req), 403, "Invalid API key")
        one_line_error(post(proc.url, {**req, "api_key": "wrong"}), 403, "Invalid API key")
        assert httpx.get(proc.url + "/languages").status_code == 200  # open, as LibreTranslate
        assert httpx.get(proc.url + "/frontend/settings").json()["keyRequired"] is True
        one_line_error(post(proc.url, {**req, "q": "x" * 201, "api_key": "s3cret"}), 413)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, proc.url, {**req, "api_key": "s3cret"})
            time.sleep(0.5)
            full = post(proc.url, {**req, "api_key": "s3cret"})
            one_line_error(full, 503, "queue is full")
            assert full.headers.get("retry-after") == "1"
            assert first.result().status_code == 200
        one_line_error(post(proc.url, {**req, "q": ["a"] * 5, "api_key": "s3cret"}), 413)
        health = httpx.get(proc.url + "/health").json()
        assert health["refused"] == 1 and health["queue"]["waiting"] == 0


def test_sigterm_finishes_queued_requests_and_exits_0() -> None:
    proc = ServeProcess(f"checkpoint={MODEL}", INT8, "serve.batch_wait_ms=1500", "train.threads=1")
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, proc.url, {"q": "Hello", "source": "en", "target": "de"})
            time.sleep(0.5)  # queued: the worker waits for others to join it
            proc.proc.send_signal(signal.SIGTERM)
            assert pending.result().status_code == 200
        assert proc.wait(timeout=60) == 0  # one signal only: no second SIGTERM
        assert "stopped (SIGTERM): 1 requests" in "".join(proc.lines)
        with pytest.raises(httpx.ConnectError):
            httpx.get(proc.url + "/health")
    finally:
        proc.stop(signal.SIGKILL)


def test_sigint_exits_0_and_user_errors_are_one_line(server: ServeProcess) -> None:
    proc = ServeProcess(f"checkpoint={MODEL}", INT8, "train.threads=1")
    assert proc.stop(signal.SIGINT) == 0
    in_use = f"cannot listen on 127.0.0.1:{server.port}"
    for args, needle in (
        ([f"checkpoint={MODEL}", INT8, f"port={server.port}"], in_use),
        (["checkpoint=no-such-model"], "no shipped model of that name"),
    ):
        r = subprocess.run([*nmt_command("serve"), *args], capture_output=True, text=True,
                           env=child_env(1), timeout=120)  # fmt: skip
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("nmt-serve: error: ") and needle in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["serve.max_queue=0"], "serve.max_queue=0: must be >= 1"),
        (["serve.max_batch=-1"], "serve.max_batch=-1: must be >= 1"),
        (["serve.batch_wait_ms=-1"], "serve.batch_wait_ms=-1.0: must be >= 0"),
        (["serve.request_timeout_s=0"], "serve.request_timeout_s=0.0: must be > 0"),
        (["port=70000"], "port=70000: must be between 0"),
        (["checkpoint=null"], "checkpoint=PATH is required"),
    ],
)
def test_bad_settings_fail_before_the_model_loads(overrides: list[str], needle: str) -> None:
    cfg = compose_config([f"checkpoint={MODEL}", *overrides], "tool")
    with pytest.raises(UserError, match=re.escape(needle)):
        check_settings(cfg)
