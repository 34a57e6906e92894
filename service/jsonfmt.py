"""JSON in the hot paths: orjson (several times faster), with the standard library wherever
orjson would refuse the input or change it, so every value comes out as `json` would give it.

orjson reads integers beyond 64 bits as floats, silently; a page or a value with a run of 19
or more digits (a string of digits matches too, harmlessly) is read by `json` instead. On the
way out, orjson refuses such integers and lone surrogates; `json` writes them, escaped.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19


def _has_long_number(raw: bytes) -> bool:
    """A run of 19 digits anywhere. Two C passes (translate, find): a regex took 17 µs a
    record, more than parsing it."""
    return raw.translate(_DIGITS_AS_ZERO).find(_NINETEEN_DIGITS) >= 0


def dumps_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a huge integer, a lone surrogate
        return json.dumps(value, separators=(",", ":")).encode()


def loads_exact(raw: bytes | str) -> tuple[Any, bool]:
    """(value, whether orjson read it). Raises ValueError on bad JSON (both parsers' errors
    are ValueErrors, and so is nesting too deep for `json`). Only what orjson read is
    guaranteed to hold plain JSON types: `json` also gives integers of any size, strings
    with lone surrogates, NaN and infinities."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    if not _has_long_number(data):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass  # NaN, lone surrogates, nesting beyond 1024, ...: `json` decides
    try:
        return json.loads(raw), False
    except RecursionError:  # `[[[[...` 100,000 deep: a ValueError like any bad JSON
        raise ValueError("JSON nested too deeply") from None


def loads(raw: bytes | str) -> Any:
    return loads_exact(raw)[0]
