"""The web viewer's search API: its parameters read in one place, and described as OpenAPI 3.1.

Everything `encoders search` does, over HTTP: the frames nearest to a sentence (``text``), a
stored frame (``frame``: RUN:SEQ or RUN:STREAM:SEQ) or an uploaded picture (POST, form field
``image``); within a ``run``, a ``stream`` and a time range (``since``, ``until``: ISO 8601 or
"2h" ago); ``k`` results from rank ``offset`` on; those at least ``min_similarity`` alike.
The document (``/api/openapi.json``) is the contract the tests check answers against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from encoders.shared.storage.hits import Hit

from ..search import MAX_OFFSET, MAX_RESULTS, Query

MAX_UPLOAD = 16 * 1024 * 1024  # an uploaded picture


def parse_search(params: Mapping[str, str], image: bytes | None) -> tuple[Query, int, int, float | None]:
    """(query, k, offset, min_similarity) from the request; ValueError saying what is wrong."""
    text, frame = text_param(params, "text", 1000), text_param(params, "frame", 300)
    given = [name for name, value in (("text", text), ("frame", frame), ("image", image)) if value]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of text, frame (GET) or an image (POST)" + (f": got {', '.join(given)}" if given else "")
        )
    k = whole_param(params, "k", 12, 1, MAX_RESULTS)
    offset = whole_param(params, "offset", 0, 0, MAX_OFFSET)
    min_similarity = None
    if params.get("min_similarity"):
        try:
            min_similarity = float(params["min_similarity"])
        except ValueError:
            raise ValueError("min_similarity must be a number in [-1, 1]") from None
        if not math.isfinite(min_similarity) or not -1.0 <= min_similarity <= 1.0:
            raise ValueError("min_similarity must be a number in [-1, 1]")
    scope = {name: text_param(params, name, 256) for name in ("run", "stream", "since", "until")}
    return Query(text=text, image=image, frame=frame, **scope), k, offset, min_similarity


def whole_param(params: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int:
    """A whole-number parameter in [lo, hi] (``default`` when absent; None: it must be given), or
    ValueError saying so. ASCII digits only: str.isdigit takes '²', which int() does not."""
    raw = params.get(name, "")
    if not raw and default is not None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(hi)) or not lo <= int(raw) <= hi:
        raise ValueError(f"{name} must be a whole number in [{lo}, {hi}]")
    return int(raw)


def text_param(params: Mapping[str, str], name: str, limit: int) -> str:
    """A text parameter, trimmed, of at most ``limit`` characters; ValueError if it holds a NUL
    character, which no database takes (it would fail the query, not the request)."""
    value = params.get(name, "").strip()[:limit]
    if "\x00" in value:
        raise ValueError(f"{name} holds a NUL character (\\0)")
    return value


_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_TEXT = {"type": ["string", "null"]}

HIT = {
    "type": "object",
    "required": list(Hit.JSON_FIELDS),
    "additionalProperties": False,
    "properties": {
        "rank": {"type": "integer", "minimum": 1},
        "run_id": {"type": "integer"},
        "run": {"type": "string"},
        "stream": {"type": "string"},
        "seq": {"type": "integer", "minimum": 0},
        "time": {**_NULLABLE_TEXT, "description": "capture time, ISO 8601"},
        "similarity": {"type": "number", "minimum": -1, "maximum": 1},
        "drift": _NULLABLE_NUMBER,
        "snapshot": {**_NULLABLE_TEXT, "description": "URL of the last snapshot of its stream at or before it"},
        "snapshot_seq": {"type": ["integer", "null"]},
        "thumbnail": {**_NULLABLE_TEXT, "description": "URL of the hit's own stored thumbnail (or its keyframe's)"},
    },
}
RESULTS = {
    "type": "object",
    "required": ["text", "results", "note", "k", "offset"],
    "properties": {
        "text": {"type": "string"},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
        "note": {"type": "string", "description": "why there are none, or what was left out"},
        "k": {"type": "integer"},
        "offset": {"type": "integer"},
    },
}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_SCOPE = [
    _param("run", "only this run (its id or name)", {"type": "string"}),
    _param("stream", "only this stream", {"type": "string"}),
    _param("since", "ISO 8601, or a time ago: 90s, 15m, 2h, 3d, 1w", {"type": "string"}),
    _param("until", "ISO 8601, or a time ago", {"type": "string"}),
    _param("k", "results per page", {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "default": 12}),
    _param("offset", "ranks skipped (paging)", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
    _param("min_similarity", "only hits at least this alike (cosine)", {"type": "number", "minimum": -1, "maximum": 1}),
]
_ANSWERS = {
    "200": {"description": "the nearest frames, best first",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Results"}}}},
    "400": {"description": "a parameter or the query is wrong",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    "404": {"description": "search is off: the viewer has no database",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    "503": {"description": "the database or the model cannot be reached now",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}  # fmt: skip

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "encoders viewer: search", "version": "1"},
    "paths": {
        "/api/search": {
            "get": {
                "summary": "Frames nearest to a sentence or to a stored frame",
                "parameters": [
                    _param("text", "a sentence (CLIP's text tower of the encoder's model)", {"type": "string"}),
                    _param("frame", "a stored frame: RUN:SEQ or RUN:STREAM:SEQ", {"type": "string"}),
                    *_SCOPE,
                ],
                "responses": _ANSWERS,
            },
            "post": {
                "summary": "Frames nearest to an uploaded picture",
                "parameters": _SCOPE,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {"image": {"type": "string", "contentMediaType": "image/jpeg"}},
                            }
                        }
                    },
                },
                "responses": _ANSWERS,
            },
        }
    },
    "components": {"schemas": {"Hit": HIT, "Results": RESULTS, "Error": ERROR}},
}
