"""Opaque cursors of the paginated listings, pure: what a listing needs to continue where a
page ended, as a URL-safe string that a client passes back as it got it."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.errors import InvalidInput

_PREFIX = "c1."
MAX_CURSOR = 4096  # longer is not one of ours
# No number of ours is larger (times in ms, positions): within it a float holds an int
# exactly, so a reader may use it as a score; a 400-digit one raised OverflowError there.
MAX_NUMBER = 2**53


def encode_cursor(kind: str, *parts: str | int) -> str:
    raw = json.dumps([kind, *parts], separators=(",", ":"), ensure_ascii=True).encode()
    return _PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, shape: tuple[type, ...]) -> tuple[Any, ...]:
    """The parts `encode_cursor(kind, ...)` put in, of the types in `shape`; InvalidInput
    for anything else (a cursor of another listing, edited, truncated)."""
    bad = InvalidInput("`cursor` is not one this listing gave")
    if len(cursor) > MAX_CURSOR or not cursor.startswith(_PREFIX):
        raise bad
    text = cursor[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(parts, list) or len(parts) != len(shape) + 1 or parts[0] != kind:
        raise bad
    values = parts[1:]
    for value, wanted in zip(values, shape, strict=True):
        # bool is an int to isinstance; no cursor of ours holds one
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise bad
        if isinstance(value, int) and not -MAX_NUMBER <= value <= MAX_NUMBER:
            raise bad
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate escape
                raise bad from None
    return tuple(values)
