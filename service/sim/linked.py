"""The simulated project's linked accounts (`GET /accounts`, StackOne's
`stackone_list_linked_accounts`): every account the simulator holds is linked unless
unlinked at run time, each with its public fields (provider, status, owner...) and fake
`credentials` and `setup_information`, so tests can prove the service never passes them on.

Pure state, no I/O: `service.sim.gate.Gate.handle_accounts` answers the requests.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from service.sim.listing import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Record, iso_ms

__all__ = ["CREDENTIAL_MARK", "LinkedAccounts", "values"]

# in every linked account's credentials and setup_information: a test finds it nowhere else
CREDENTIAL_MARK = "sim-provider-secret"
STATUSES = ("active", "inactive", "error")
# what a link may set (`POST /_sim/accounts/{id}`), besides `not_lms`
FIELDS = (
    "provider",
    "provider_name",
    "label",
    "status",
    "status_reasons",
    "origin_owner_id",
    "origin_owner_name",
    "origin_username",
)


def values(query: Mapping[str, str], name: str) -> list[str]:
    """Every value of a list parameter: repeated (`?providers=a&providers=b`), comma
    separated (`?providers=a,b`), or both."""
    getall = getattr(query, "getall", None)
    raw = list(getall(name, [])) if getall is not None else [query[name]] if name in query else []
    return [v for item in raw for v in str(item).split(",") if v]


def _page_number(query: Mapping[str, str], name: str, default: int, top: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if not 1 <= number <= top:
        raise ValueError(f"{name} must be within 1..{top}")
    return number


class LinkedAccounts:
    """Which of the simulator's accounts are linked, and what the listing says of each."""

    def __init__(self) -> None:
        self.fields: dict[str, Record] = {}  # account id → its public fields set so far
        self.unlinked: set[str] = set()
        # accounts of another category (an HRIS): their LMS routes answer 404
        self.not_lms: set[str] = set()
        self.linked_at: dict[str, float] = {}

    def link(self, account_id: str, fields: Mapping[str, Any], now: float) -> Record:
        """Link the account (again), merging `fields` (and `not_lms`) into what it says."""
        unknown = set(fields) - {*FIELDS, "not_lms"}
        if unknown:
            raise ValueError(f"unknown linked account fields: {sorted(unknown)}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status must be one of {list(STATUSES)}")
        reasons = fields.get("status_reasons", [])
        if not isinstance(reasons, list):
            raise ValueError("status_reasons must be a list")
        if not isinstance(fields.get("not_lms", False), bool):
            raise ValueError("not_lms must be a boolean")
        if fields.get("not_lms"):
            self.not_lms.add(account_id)
        elif "not_lms" in fields:
            self.not_lms.discard(account_id)
        if account_id in self.unlinked or account_id not in self.linked_at:
            self.linked_at[account_id] = now
        self.unlinked.discard(account_id)
        own = self.fields.setdefault(account_id, {})
        own.update({k: copy.deepcopy(v) for k, v in fields.items() if k != "not_lms"})
        if "status" in fields or "status_reasons" in fields:
            own["updated_at"] = iso_ms(now)
        return self.record(account_id)

    def unlink(self, account_id: str) -> None:
        self.unlinked.add(account_id)

    def record(self, account_id: str) -> Record:
        """The account as `GET /accounts` lists it, secrets and all."""
        linked = iso_ms(self.linked_at.get(account_id, 0.0))
        return {
            "id": account_id,
            "provider": "docebo",
            "provider_name": "Docebo",
            "label": f"LMS of {account_id}",
            "status": "active",
            "status_reasons": [],
            "origin_owner_id": f"owner_{account_id}",
            "origin_owner_name": f"Customer {account_id}",
            "origin_username": f"admin@{account_id}.example",
            "created_at": linked,
            "updated_at": linked,
            **copy.deepcopy(self.fields.get(account_id, {})),
            "credentials": {"api_key": f"{CREDENTIAL_MARK}-{account_id}", "password": "hunter2"},
            "setup_information": {"subdomain": account_id, "token": f"{CREDENTIAL_MARK}-setup"},
        }

    def page(
        self, accounts: Iterable[str], query: Mapping[str, str], limit: int | None
    ) -> list[Record]:
        """One page of the listing of `accounts` (the simulator's), filtered by the query's
        `provider`/`providers`, `origin_owner_id` and `account_ids`; `limit`: a listing cut
        short shows only that many accounts. ValueError for a bad page or page_size."""
        page = _page_number(query, "page", 1, 1_000_000)
        size = _page_number(query, "page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        providers = set(values(query, "providers")) | set(values(query, "provider"))
        owner = query.get("origin_owner_id")
        wanted = set(values(query, "account_ids"))
        listed = [
            record
            for record in (self.record(a) for a in sorted(accounts) if a not in self.unlinked)
            if (not providers or record["provider"] in providers)
            and (owner is None or record["origin_owner_id"] == owner)
            and (not wanted or record["id"] in wanted)
        ]
        if limit is not None:
            listed = listed[:limit]
        return listed[(page - 1) * size : page * size]
