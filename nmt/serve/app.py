"""The ASGI application of ``nmt-serve`` (FastAPI): LibreTranslate's API, health, the web UI.

- ``GET /`` the one-page web UI (:mod:`nmt.serve.static`, no external resources).
- ``GET /languages`` LibreTranslate's list: each source language with its targets.
- ``POST /translate`` LibreTranslate's request (:mod:`nmt.serve.protocol`) ->
  ``{"translatedText": str | [str], "alternatives": ..., "placeablesKept": bool | [bool]}``;
  ``source: "auto"`` is the model's source language, not a detection (``detectedLanguage``
  says so: confidence 0, ``"assumed": true``).
- ``POST /placeables`` ``{"q": str | [str]}`` -> the texts cut into plain and placeable
  segments (:func:`data.placeables.find`; the UI highlights them).
- ``GET /health`` the model and the batcher's counters; ``GET /frontend/settings`` the limits
  LibreTranslate's clients read.

Errors are ``{"error": "one line"}`` with a 4xx status (5xx: queue full, shutting down, a
failure of the model); the server keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Message

from data.placeables import find
from nmt.config import AppConfig
from nmt.errors import UserError
from nmt.serve.batcher import Batcher, Closed, QueueFull
from nmt.serve.protocol import (
    ApiError,
    TranslateRequest,
    form_fields,
    json_fields,
    parse_translate,
    urlencoded_fields,
)
from nmt.translator import Translation, Translator

# (n_best, target_lang or None, placeables): requests decode together only when these agree
Settings = tuple[int, str | None, bool]


def body_limit(max_chars: int) -> int:
    """Bytes a request body may have: ``max_chars`` characters at their longest encoding
    (12 bytes: a JSON surrogate pair or a percent-encoded 4-byte character) plus 64 KiB."""
    return 12 * max_chars + 65536


def make_batcher(
    translator: Translator, cfg: AppConfig, thread: bool = True
) -> Batcher[list[Translation]]:
    """The batcher of ``cfg.serve``'s limits around ``translator`` (``thread=False``: its
    worker is the thread that calls its ``run``)."""

    def run(texts: list[str], settings: Any) -> list[list[Translation]]:
        n_best, target_lang, placeables = settings
        return translator.translate(
            texts, n_best=n_best, target_lang=target_lang, placeables=placeables
        )

    s = cfg.serve
    return Batcher(run, s.max_queue, s.max_batch, s.batch_wait_ms / 1000.0, thread)


def create_app(
    translator: Translator,
    cfg: AppConfig,
    batcher: Batcher[list[Translation]] | None = None,
    arithmetic: str = "",
    on_start: Callable[[], None] | None = None,
) -> FastAPI:
    """The application serving ``translator`` with ``cfg``'s limits and API key; ``on_start``
    runs when it starts, the batcher is closed (queued requests finished) when it shuts
    down."""
    queue = batcher or make_batcher(translator, cfg)
    limits = cfg.serve
    page = resources.files("nmt.serve").joinpath("static/index.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if on_start is not None:
            on_start()
        yield
        await asyncio.to_thread(queue.close, True, limits.request_timeout_s)

    app = FastAPI(
        title="nmt-serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.batcher = queue

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"error": err.message}, err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(err.detail).split())}, err.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(err).__name__}"}, 500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/languages")
    async def languages() -> list[dict[str, Any]]:
        return translator.languages()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        st = queue.stats
        return {
            "status": "ok",
            "model": translator.name or "",
            "languages": [f"{d['code']}-{t}" for d in translator.languages() for t in d["targets"]],
            "arithmetic": arithmetic,
            "beam_size": translator.decode.beam_size,
            "key_required": bool(cfg.api_key),
            "queue": {"waiting": queue.queued, "max": limits.max_queue},
            "max_batch": limits.max_batch,
            "batch_wait_ms": limits.batch_wait_ms,
            "requests": st.requests,
            "sentences": st.sentences,
            "batches": st.batches,
            "largest_batch": st.largest_batch,
            "refused": st.refused,
            "failed": st.failed,
        }

    @app.get("/frontend/settings")
    async def frontend_settings() -> dict[str, Any]:
        first = translator.languages()[0]
        return {
            "charLimit": limits.max_chars,
            "keyRequired": bool(cfg.api_key),
            "apiKeys": False,
            "suggestions": False,
            "supportedFilesFormat": [],
            "language": {
                "source": {"code": first["code"], "name": first["name"]},
                "target": {"code": first["targets"][0], "name": first["targets"][0]},
            },
        }

    @app.post("/translate")
    async def translate(request: Request) -> JSONResponse:
        fields = await read_fields(request, body_limit(limits.max_chars))
        req = parse_translate(fields, limits.max_chars, limits.max_queue)
        if cfg.api_key and not hmac.compare_digest(req.api_key.encode(), cfg.api_key.encode()):
            raise ApiError(403, "Invalid API key")
        source = resolve_source(translator, req)
        try:
            target_lang = translator.target_for(source, req.target)
        except UserError as err:
            raise ApiError(400, str(err)) from None
        n_best = min(1 + req.alternatives, translator.decode.beam_size)
        placeables = req.html or translator.decode.placeables
        settings: Settings = (n_best, target_lang, placeables)
        try:
            future = queue.submit(req.texts, settings)
        except QueueFull as err:
            raise ApiError(503, f"Busy: {err}; try again later", {"Retry-After": "1"}) from None
        except Closed as err:
            raise ApiError(503, str(err)) from None
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), limits.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise ApiError(503, f"timed out after {limits.request_timeout_s:g} s") from None
        except Closed as err:
            raise ApiError(503, str(err)) from None
        except UserError as err:
            raise ApiError(400, str(err)) from None
        return JSONResponse(answer(req, source, results))

    @app.post("/placeables")
    async def placeables(request: Request) -> dict[str, Any]:
        fields = json_fields(await read_body(request, body_limit(2 * limits.max_chars)))
        q = fields.get("q")
        texts: list[Any] = q if isinstance(q, list) else [q]
        if not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "Invalid request: q must be a string or a list of strings")
        cut = [segments(str(t)) for t in texts]
        return {"segments": cut if isinstance(q, list) else cut[0]}

    return app


def resolve_source(translator: Translator, req: TranslateRequest) -> str:
    """The request's source language; ``auto`` is the model's (no language detection): its
    source language, or for a multilingual model the first one with the requested target."""
    if req.source != "auto":
        return req.source
    langs = translator.languages()
    with_target = [d["code"] for d in langs if req.target in d["targets"]]
    if translator.source_lang in with_target or not with_target:
        return translator.source_lang
    return str(with_target[0])


def answer(req: TranslateRequest, source: str, results: list[list[Translation]]) -> dict[str, Any]:
    """LibreTranslate's answer: a string per text (a list when ``q`` was one), alternatives
    when asked for, whether placeables were kept, the assumed source for ``auto``."""

    def one(values: list[Any]) -> Any:
        return values if req.batch else values[0]

    doc: dict[str, Any] = {"translatedText": one([r[0].text for r in results])}
    if req.alternatives:
        doc["alternatives"] = one([[t.text for t in r[1 : 1 + req.alternatives]] for r in results])
    if req.source == "auto":
        assumed = {"language": source, "confidence": 0.0, "assumed": True}
        doc["detectedLanguage"] = one([assumed for _ in results])
    doc["placeablesKept"] = one([r[0].placeables_ok for r in results])
    return doc


def segments(text: str) -> list[dict[str, str]]:
    """``text`` cut into segments ``{"text": ...}`` and placeables ``{"text": ..., "kind":
    ...}`` that join back to it."""
    out: list[dict[str, str]] = []
    at = 0
    for p in find(text):
        if p.start > at:
            out.append({"text": text[at : p.start]})
        out.append({"text": p.text, "kind": p.kind})
        at = p.end
    if at < len(text):
        out.append({"text": text[at:]})
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; over ``limit`` bytes (announced or read) is a 413."""
    too_big = ApiError(413, f"Invalid request: the body exceeds {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: Request, limit: int) -> dict[str, Any]:
    """A request's fields: its JSON object, or its form (query parameters fill in names the
    form lacks, as LibreTranslate reads them)."""
    body = await read_body(request, limit)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return json_fields(body)
    if kind == "multipart/form-data":

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=0, max_fields=10_000)
        except HTTPException as err:
            raise ApiError(400, f"Invalid request: {err.detail}") from None
        pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        fields = form_fields(pairs)
    elif not kind and body.lstrip()[:1] in (b"{", b"["):
        return json_fields(body)  # JSON sent without a content type
    else:
        fields = urlencoded_fields(body)
    for name, value in form_fields(list(request.query_params.multi_items())).items():
        fields.setdefault(name, value)
    return fields
