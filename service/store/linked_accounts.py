"""The linked accounts account discovery found (`GET /accounts`), as Redis holds them for
every process: each one's public fields, and those that turned out to be no LMS account.

A linked account's `credentials` and `setup_information` are secrets of the customer's
provider connection: `LinkedAccount` has no field for them, so they are never stored,
logged or shown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis.asyncio import Redis

from service.store import keys

ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class LinkedAccount:
    """One linked account as the listing gave it (untrusted upstream text, shown escaped)."""

    id: str
    provider: str | None = None
    provider_name: str | None = None
    label: str | None = None
    status: str = ACTIVE  # active, inactive or error
    status_reasons: tuple[str, ...] = ()
    origin_owner_id: str | None = None
    origin_owner_name: str | None = None
    # when discovery first found it (ms, the upstream's clock): its records stamped later are
    # changes, not part of its baseline
    found_ms: int = 0

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def encode(self) -> str:
        data = asdict(self)
        data["status_reasons"] = list(self.status_reasons)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> LinkedAccount:
        data = json.loads(raw)
        return cls(
            id=str(data["id"]),
            provider=_text(data.get("provider")),
            provider_name=_text(data.get("provider_name")),
            label=_text(data.get("label")),
            status=str(data.get("status") or ACTIVE),
            status_reasons=tuple(str(r) for r in data.get("status_reasons") or ()),
            origin_owner_id=_text(data.get("origin_owner_id")),
            origin_owner_name=_text(data.get("origin_owner_name")),
            found_ms=int(data.get("found_ms") or 0),
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class LinkedAccountStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def version(self) -> int:
        raw = await self.redis.get(keys.LINKED_VERSION)
        return int(raw or 0)

    async def all(self) -> dict[str, LinkedAccount]:
        """Every linked account discovery knows, active or not."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.LINKED_ACCOUNTS))
        return {account_id: LinkedAccount.decode(value) for account_id, value in raw.items()}

    async def not_lms(self) -> dict[str, int]:
        """Account id → when (ms) an account that answered as no LMS account is tried again."""
        raw = await self.redis.zrange(keys.NOT_LMS_ACCOUNTS, 0, -1, withscores=True)
        return {account_id: int(score) for account_id, score in cast(list[tuple[str, float]], raw)}
