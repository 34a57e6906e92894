"""The state of one reader of an upstream listing: a user's poll (`keys.user_state`), an
account's change feed (`keys.feed_state`) or its user listing (`keys.discovery_state`). One
hash format for the three, encoded and decoded here only. The hash may also hold `due_now`,
which only the scripts read and write (lease.lua, due_now.lua).

A user's poll and an account's feed read each tracked resource (service/resources.py) in
turn: a resource's own fields (RESOURCE_FIELDS) are stored under its `state_prefix`, the
reader's (last poll, failures, activity) once. A ReadState is the hash as one resource's
read sees it: `prefix` picks that resource's fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ReadState:
    """None means unknown when read, and "leave as it is" when written."""

    watermark_ms: int | None = None  # the newest updated_at read (the next read starts there)
    baselined: bool | None = None  # a user's first complete read is done: changes send events
    last_full_sync_ms: int | None = None
    last_poll_ms: int | None = None  # the last read that succeeded
    failures: int | None = None  # failed reads in a row
    last_error: str | None = None  # '' clears it
    # a user's activity, for the adaptive cadence (service.reading.plan)
    change_rate: float | None = None  # recent changes (per RATE_MEMORY intervals), fading
    in_progress: bool | None = None  # an assignment in progress
    next_due_date_ms: int | None = None  # the nearest due date of an open assignment; 0: none
    # a feed's, for the adaptive cadence: its last read found changes (the next comes soon)
    busy: bool | None = None
    # a listing's: when a complete listing first dropped more than half of what it had
    # listed (held until a second complete listing agrees); 0: none
    mass_drop_ms: int | None = None
    # a user's: when a listing found it (the listing's answer `Date`, the upstream's clock):
    # its baseline must not absorb a change stamped after that
    found_ms: int | None = None
    # a feed's: the instant on StackOne's clock (its answers' `Date`) from which the
    # provider's clock had reached the watermark (detect.FeedWindow); 0: none
    anchor_ms: int | None = None

    @classmethod
    def after_read(cls, watermark: datetime | None, now_ms: int, *, full: bool) -> ReadState:
        """What a read that succeeded leaves: its new watermark, when it ran (and when it
        read everything, if it did), no failures."""
        return cls(
            watermark_ms=None if watermark is None else int(watermark.timestamp() * 1000),
            last_full_sync_ms=now_ms if full else None,
            last_poll_ms=now_ms,
            failures=0,
            last_error="",
        )

    def complete_read_due(self, now: float, every: float) -> bool:
        """No complete read yet, or the last one is `every` seconds old (`now`: epoch s)."""
        last = self.last_full_sync_ms
        return last is None or now - last / 1000 >= every

    def encode(self, prefix: str = "") -> dict[str, str]:
        """The hash fields to write: every field that is not None (a resource's own fields
        under `prefix`)."""
        out: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None:
                out[_hash_field(field.name, prefix)] = _encode(value)
        return out

    @classmethod
    def decode(cls, raw: Mapping[str, str | None], prefix: str = "") -> ReadState:
        """From HGETALL (or HMGET zipped with hash_fields(prefix)); empty values read as
        None; a resource's own fields read under `prefix`."""
        values: dict[str, object] = {}
        for name in _HASH_FIELD:
            value = raw.get(_hash_field(name, prefix))
            if value:
                values[name] = value == "1" if name in _FLAGS else _DECODE[name](value)
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def decode_list(cls, values: Iterable[str | None], prefix: str = "") -> ReadState:
        """From HMGET of hash_fields(prefix), in that order."""
        return cls.decode(dict(zip(hash_fields(prefix), values, strict=True)), prefix)


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# attribute → hash field; the field names are those 0.1 wrote, so its state reads as it was
_HASH_FIELD = {
    "watermark_ms": "watermark",
    "baselined": "baselined",
    "last_full_sync_ms": "last_full_sync",
    "last_poll_ms": "last_poll",
    "failures": "failures",
    "last_error": "last_error",
    "change_rate": "change_rate",
    "in_progress": "in_progress",
    "next_due_date_ms": "next_due_date",
    "busy": "busy",
    "mass_drop_ms": "mass_drop",
    "found_ms": "found",
    "anchor_ms": "anchor",
}
_FLAGS = {"baselined", "in_progress", "busy"}
_DECODE = {
    "watermark_ms": int,
    "last_full_sync_ms": int,
    "last_poll_ms": int,
    "failures": int,
    "last_error": str,
    "change_rate": float,
    "next_due_date_ms": int,
    "mass_drop_ms": int,
    "found_ms": int,
    "anchor_ms": int,
}
FIELDS = list(_HASH_FIELD.values())
# a tracked resource's own: where its reads stand (each resource's reads move on their own)
RESOURCE_FIELDS = frozenset({"watermark_ms", "anchor_ms", "baselined", "last_full_sync_ms"})


def _hash_field(name: str, prefix: str) -> str:
    field = _HASH_FIELD[name]
    return prefix + field if prefix and name in RESOURCE_FIELDS else field


def hash_fields(prefix: str = "") -> list[str]:
    """The hash's fields as one resource's read sees them (FIELDS for assignments)."""
    return [_hash_field(name, prefix) for name in _HASH_FIELD]
