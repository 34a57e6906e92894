"""Timestamps as the upstream API and the webhooks write them: ISO 8601, milliseconds, `Z`."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=64)  # a poll stamps every event it detects with the same moment
def iso_ms(moment: datetime) -> str:
    """2026-11-28T06:00:00.123Z"""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_iso(value: object) -> datetime | None:
    """An upstream timestamp, or None when it is missing or unreadable (never an exception)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
