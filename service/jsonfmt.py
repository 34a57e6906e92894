"""JSON in the hot paths: orjson (several times faster), with the standard library wherever
orjson would refuse the input or change it, so every value comes out as `json` would give it.

orjson reads integers beyond 64 bits as floats, silently; a page or a value with a run of 19
or more digits (a string of digits matches too, harmlessly) is read by `json` instead. On the
way out, orjson refuses such integers and lone surrogates; `json` writes them, escaped.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19}")
_LONG_NUMBER_TEXT = re.compile(r"\d{19}")


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: a huge integer, a lone surrogate
        return json.dumps(value, separators=(",", ":"))


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def loads_exact(raw: bytes | str) -> tuple[Any, bool]:
    """(value, whether orjson read it). Raises ValueError on bad JSON (both parsers' errors
    are ValueErrors). Only what orjson read is guaranteed to hold plain JSON types: `json`
    also gives integers of any size and strings with lone surrogates."""
    long_number = (
        _LONG_NUMBER.search(raw) if isinstance(raw, bytes) else _LONG_NUMBER_TEXT.search(raw)
    )
    if long_number is None:
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass  # NaN, lone surrogates, ...: `json` decides
    return json.loads(raw), False


def loads(raw: bytes | str) -> Any:
    return loads_exact(raw)[0]
