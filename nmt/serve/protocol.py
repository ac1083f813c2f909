"""LibreTranslate's ``POST /translate``: reading a request's fields and checking them.

Fields come as a JSON object or as form fields (``application/x-www-form-urlencoded`` or
``multipart/form-data``; a repeated ``q`` is a list): ``q`` (a string or a list of strings),
``source``, ``target``, ``format`` (``text`` or ``html``), ``alternatives`` (how many
further translations besides the best), ``api_key``. Every problem is an :class:`ApiError`:
an HTTP status and one line, answered as ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

FORMATS = ("text", "html")


class ApiError(Exception):
    """An answer other than 200: ``status`` and a one-line ``message``; ``headers`` to add."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        self.status = status
        self.message = " ".join(str(message).split())
        self.headers = dict(headers or {})
        super().__init__(self.message)


@dataclass(frozen=True)
class TranslateRequest:
    """A checked ``/translate`` request: ``texts`` (``batch``: ``q`` was a list)."""

    texts: list[str]
    batch: bool
    source: str
    target: str
    html: bool
    alternatives: int
    api_key: str


def json_fields(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; anything else is a 400."""
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the body is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise ApiError(400, f"Invalid request: malformed JSON ({err.msg} at {err.pos})") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid request: expected a JSON object, got {_kind(value)}")
    return value


def form_fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form fields as a mapping: a name given once is a string, ``q`` given more than once
    a list (other repeated names: the first value)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name == "q" and name in out:
            out[name] = [*out[name], value] if isinstance(out[name], list) else [out[name], value]
        else:
            out.setdefault(name, value)
    return out


def urlencoded_fields(body: bytes) -> dict[str, Any]:
    """The fields of an ``application/x-www-form-urlencoded`` body."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "Invalid request: the form is not UTF-8") from None
    return form_fields(pairs)


def parse_translate(fields: Mapping[str, Any], max_chars: int, max_texts: int) -> TranslateRequest:
    """Check the fields of a ``/translate`` request (400; 413 over ``max_chars`` characters
    in all or ``max_texts`` texts)."""
    q = fields.get("q")
    if q is None or q == "" or q == []:
        raise ApiError(400, "Invalid request: missing q parameter")
    if isinstance(q, list):
        if not all(isinstance(x, str) for x in q):
            bad = next(x for x in q if not isinstance(x, str))
            raise ApiError(400, f"Invalid request: q must hold strings, got {_kind(bad)}")
        texts, batch = list(q), True
    elif isinstance(q, str):
        texts, batch = [q], False
    else:
        raise ApiError(400, f"Invalid request: q must be a string or a list, got {_kind(q)}")
    source, target = _text_field(fields, "source"), _text_field(fields, "target")
    if not source:
        raise ApiError(400, "Invalid request: missing source parameter")
    if not target:
        raise ApiError(400, "Invalid request: missing target parameter")
    fmt = _text_field(fields, "format") or "text"
    if fmt not in FORMATS:
        raise ApiError(400, f"Invalid request: format {fmt!r} is not supported (text, html)")
    chars = sum(len(t) for t in texts)
    if chars > max_chars:
        raise ApiError(
            413, f"Invalid request: request ({chars} characters) exceeds the limit ({max_chars})"
        )
    if len(texts) > max_texts:
        raise ApiError(
            413, f"Invalid request: {len(texts)} texts exceed the limit of {max_texts} per request"
        )
    return TranslateRequest(
        texts=texts,
        batch=batch,
        source=source,
        target=target,
        html=fmt == "html",
        alternatives=_alternatives(fields.get("alternatives")),
        api_key=_text_field(fields, "api_key"),
    )


def _text_field(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid request: {name} must be a string, got {_kind(value)}")
    return value.strip()


def _alternatives(value: Any) -> int:
    """``alternatives``: a whole number >= 0 (JSON number or string)."""
    if value is None or value == "":
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, f"Invalid request: alternatives must be a number, got {_kind(value)}")
    try:
        n = int(value)
    except ValueError:
        raise ApiError(
            400, f"Invalid request: alternatives must be a number, got {value!r}"
        ) from None
    if n < 0:
        raise ApiError(400, f"Invalid request: alternatives must be >= 0, got {n}")
    return n


def _kind(value: Any) -> str:
    """The JSON name of ``value``'s type."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
