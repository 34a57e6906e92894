"""A linked account (StackOne's `LinkedAccount`, `GET /accounts`): its public fields only.

Pure. The upstream client parses the listing into it, the store keeps it, the directory and
the admin API read it. A linked account's `credentials` and `setup_information` are secrets
of the customer's provider connection: `LinkedAccount` has no field for them, so they are
dropped where the listing is parsed and never stored, logged or shown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

ACTIVE = "active"
# untrusted upstream text is kept short: it is stored for every account and shown
MAX_TEXT = 200
MAX_REASONS = 10


@dataclass(frozen=True, slots=True)
class LinkedAccount:
    """One linked account as the listing gave it (untrusted upstream text, shown escaped)."""

    id: str
    provider: str | None = None
    provider_name: str | None = None
    label: str | None = None
    status: str = ACTIVE  # active, inactive or error (anything else: not active)
    status_reasons: tuple[str, ...] = ()
    origin_owner_id: str | None = None
    origin_owner_name: str | None = None
    # when discovery found it active (ms, the upstream's clock: the listing's `Date`), the
    # first time or again after a spell not active: an account never read yet baselines
    # its users from then on, so a record stamped later is a change, not part of it
    found_ms: int = 0
    # when a complete listing first left it out (ms, the service's clock), 0: listed. Paged
    # listings shift when an account before it is unlinked meanwhile, so it is not read
    # (its state is kept) until a second listing an interval later agrees it is gone
    missing_ms: int = 0

    @property
    def active(self) -> bool:
        """Read: said to be active by the last listing, which named it."""
        return self.status == ACTIVE and not self.missing_ms

    def same_listing(self, other: LinkedAccount) -> bool:
        """The same public fields (when it was found aside)."""
        return replace(self, found_ms=0) == replace(other, found_ms=0)

    def encode(self) -> str:
        data = asdict(self)
        data["status_reasons"] = list(self.status_reasons)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> LinkedAccount:
        data = json.loads(raw)
        return cls(
            id=str(data["id"]),
            provider=text(data.get("provider")),
            provider_name=text(data.get("provider_name")),
            label=text(data.get("label")),
            status=str(data.get("status") or ACTIVE),
            status_reasons=tuple(str(r) for r in data.get("status_reasons") or ()),
            origin_owner_id=text(data.get("origin_owner_id")),
            origin_owner_name=text(data.get("origin_owner_name")),
            found_ms=int(data.get("found_ms") or 0),
            missing_ms=int(data.get("missing_ms") or 0),
        )

    @classmethod
    def listed(cls, item: dict[str, Any]) -> LinkedAccount | None:
        """One item of a `GET /accounts` page, its public fields only; None without a usable
        `id` (a string, or a number)."""
        raw_id = item.get("id")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or not raw_id or len(raw_id) > MAX_TEXT:
            return None
        status = item.get("status")
        reasons = item.get("status_reasons")
        return cls(
            id=raw_id,
            provider=text(item.get("provider")),
            provider_name=text(item.get("provider_name")),
            label=text(item.get("label")),
            # none given is not `active`: only an account said to be active is read
            status=(isinstance(status, str) and text(status)) or "unknown",
            status_reasons=tuple(
                _reason(r) for r in (reasons if isinstance(reasons, list) else [])[:MAX_REASONS]
            ),
            origin_owner_id=text(item.get("origin_owner_id")),
            origin_owner_name=text(item.get("origin_owner_name")),
        )


def text(value: Any) -> str | None:
    """A scalar as bounded text; anything else (an object, a list) is not one: None."""
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)[:MAX_TEXT]


def _reason(value: Any) -> str:
    """A status reason: StackOne gives `{code, description, timestamp}` objects (or text)."""
    if isinstance(value, dict):
        parts = [text(value.get(k)) for k in ("code", "description")]
        return ": ".join(p for p in parts if p) or "unknown"
    return text(value) or "unknown"
