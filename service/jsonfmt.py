"""JSON in the hot paths: orjson (several times faster), with the standard library as the
fallback for what orjson refuses (integers beyond 64 bits), so no input is ever rejected that
`json` accepts. Output is compact; non-ASCII text stays UTF-8, which JSON allows.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer wider than 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes | str) -> Any:
    """Raises ValueError (orjson's and json's decode errors both are) on bad JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # raises its own ValueError when the JSON really is bad
