"""What the simulated LMS holds: accounts → users → assignments, each user's metadata, and
the stable per-account order the account-wide listings page through.

Pure, no I/O. `accounts` is a plain nested dict that callers may also write straight into
(the benchmark's bulk loader does); the account-wide order catches up with such writes at the
start of each walk (see `LMSUsers.catch_up`).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from service.sim.listing import Keyset, Record, iso_ms, parse_iso_ms

STATUS_SOURCE = {"pending": "Not Started", "in_progress": "In Progress", "completed": "Completed"}
_NO_RECORDS: dict[str, Record] = {}

__all__ = ["STATUS_SOURCE", "LMSRecords", "LMSUsers", "NotFoundError", "remote_user_id"]


class NotFoundError(LookupError):
    """An account, user or assignment the simulator does not hold."""


def remote_user_id(user_id: str) -> str:
    """The provider's id of a user, as the defaults spell it on users and their records."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-user:{user_id}"))


class _AccountOrder:
    """One account's listing order: its records by (user, assignment) and its users."""

    def __init__(self) -> None:
        self.records: Keyset[tuple[str, str]] = Keyset()
        self.users: Keyset[str] = Keyset()


class LMSUsers:
    """Accounts and their users (with metadata), the clock that stamps them, and the
    account-wide listing order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # how far the provider's clock, which stamps records, is from StackOne's (`clock`,
        # which dates the answers): providers' clocks are often minutes off
        self.provider_skew = 0.0
        self.accounts: dict[str, dict[str, dict[str, Record]]] = {}
        self.profiles: dict[str, dict[str, Record]] = {}  # account → user → user metadata
        self._orders: dict[str, _AccountOrder] = {}

    def now_iso(self) -> str:
        """The provider's clock as an ISO timestamp."""
        return iso_ms(self.clock() + self.provider_skew)

    def _bumped(self, previous: Record | None) -> str:
        """Now, but always after the record's previous updated_at, so every edit is visible
        to a strictly-after filter even when two edits fall in the same millisecond."""
        now_ms = round((self.clock() + self.provider_skew) * 1000)
        prev = previous.get("updated_at") if previous else None
        if isinstance(prev, str):
            try:
                now_ms = max(now_ms, parse_iso_ms(prev) + 1)
            except ValueError:
                pass
        return iso_ms(now_ms / 1000)

    def _order(self, account_id: str) -> _AccountOrder:
        return self._orders.setdefault(account_id, _AccountOrder())

    def add_account(self, account_id: str) -> None:
        """Create an account (no-op when it exists)."""
        self.accounts.setdefault(account_id, {})

    def add_user(self, account_id: str, user_id: str) -> None:
        """Create a user with default metadata, and its account if needed (no-op when the
        user exists)."""
        self.accounts.setdefault(account_id, {}).setdefault(user_id, {})
        self._profile(account_id, user_id)
        self._order(account_id).users.add(user_id)

    def _records(self, account_id: str, user_id: str) -> dict[str, Record]:
        try:
            return self.accounts[account_id][user_id]
        except KeyError:
            raise NotFoundError(f"no user {user_id!r} in account {account_id!r}") from None

    def _profile(self, account_id: str, user_id: str) -> Record:
        """The user's metadata, made with plausible defaults the first time it is needed."""
        profiles = self.profiles.setdefault(account_id, {})
        if user_id not in profiles:
            now = self.now_iso()
            profiles[user_id] = {
                "id": user_id,
                "remote_id": remote_user_id(user_id),
                "external_reference": f"emp-{user_id}",
                "active": True,
                "email": f"{user_id}@example.com",
                "phone_number": None,
                "name": f"User {user_id}",
                "created_at": now,
                "updated_at": now,
                "unified_custom_fields": {},
            }
        return profiles[user_id]

    def set_user(self, account_id: str, user_id: str, **fields: Any) -> Record:
        """Create a user or merge top-level fields into its metadata (`active=False`
        deactivates it). updated_at moves to now, strictly forward, unless given."""
        if fields.get("id", user_id) != user_id:
            raise ValueError("a user's id cannot change")
        if not isinstance(fields.get("active", True), bool):
            raise ValueError("active must be a boolean")
        existed = user_id in self.accounts.get(account_id, {})
        self.add_user(account_id, user_id)
        profile = self._profile(account_id, user_id)
        merged = {**profile, **copy.deepcopy(fields)}
        if existed and "updated_at" not in fields:
            merged["updated_at"] = self._bumped(profile)
        self.profiles[account_id][user_id] = merged
        return copy.deepcopy(merged)

    def get_user(self, account_id: str, user_id: str) -> Record:
        """A copy of a user's metadata."""
        self._records(account_id, user_id)
        return copy.deepcopy(self._profile(account_id, user_id))

    def remove_user(self, account_id: str, user_id: str) -> Record:
        """Remove a user and its assignments from every listing; returns its metadata."""
        records = self._records(account_id, user_id)
        profile = self._profile(account_id, user_id)
        del self.accounts[account_id][user_id]
        del self.profiles[account_id][user_id]
        order = self._order(account_id)
        order.users.discard(user_id)
        for assignment_id in records:
            order.records.discard((user_id, assignment_id))
        return profile

    # -- listing sources: (position, record) after a position; the account must exist ------

    def catch_up(self, account_id: str) -> None:
        """Give users and records written straight into `accounts` their place at the end of
        the account's order. O(account): run once per walk, at its first page."""
        order = self._order(account_id)
        users = self.accounts[account_id]
        order.users.update(users)
        order.records.update((u, aid) for u, records in users.items() for aid in records)

    def user_records(
        self, account_id: str, user_id: str, after: int
    ) -> Iterator[tuple[int, Record]]:
        """A user's records, positioned by their index among the user's records: offset
        paging, as the per-user endpoint has always paged (a deletion shifts later pages)."""
        records = list(self._records(account_id, user_id).values())
        return ((i, records[i]) for i in range(after + 1, len(records)))

    def account_records(
        self, account_id: str, after: int, user_id: str | None = None
    ) -> Iterator[tuple[int, Record]]:
        """Every record of the account in its stable order, or only one user's."""
        users, order = self.accounts[account_id], self._order(account_id).records
        if user_id is not None:
            # a user has few records: sort them by position rather than scan the account
            mine = users.get(user_id, _NO_RECORDS)
            positions = {aid: order.position((user_id, aid)) for aid in mine}
            placed = sorted((p, aid) for aid, p in positions.items() if p is not None and p > after)
            return ((p, mine[aid]) for p, aid in placed)
        return (
            (position, record)
            for position, (u, aid) in order.after(after)
            # None: deleted straight from `accounts`, and skipped
            if (record := users.get(u, _NO_RECORDS).get(aid)) is not None
        )

    def account_users(self, account_id: str, after: int) -> Iterator[tuple[int, Record]]:
        """Every user of the account (its metadata) in its stable order."""
        users, order = self.accounts[account_id], self._order(account_id).users
        return ((p, self._profile(account_id, u)) for p, u in order.after(after) if u in users)


class LMSRecords(LMSUsers):
    """Assignments, with the defaults and timestamps a real LMS would give them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._next_id = 1

    def _get(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        try:
            return self._records(account_id, user_id)[assignment_id]
        except KeyError:
            raise NotFoundError(f"no assignment {assignment_id!r}") from None

    def _new_id(self) -> str:
        self._next_id += 1
        return f"a_{self._next_id - 1}"

    def _defaults(self, assignment_id: str, user_id: str) -> Record:
        now = self.now_iso()
        n = "".join(ch for ch in assignment_id if ch.isdigit()) or "0"
        return {
            "id": assignment_id,
            "remote_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{assignment_id}")),
            "user_id": user_id,
            "remote_user_id": remote_user_id(user_id),
            "learning_object_id": f"lo_{n}",
            "learning_object_type": {"value": "course", "source_value": "COURSE"},
            "learning_object_external_reference": f"course-{n}",
            "status": {"value": "pending", "source_value": "Not Started"},
            "progress": 0,
            "created_at": now,
            "updated_at": now,
            "assigned_at": now,
            "due_date": None,
            "completed_at": None,
            "result": None,
            "certificate_url": None,
            "course_id": f"{n}-ENG-1",
            "unified_custom_fields": {},
        }

    def put_assignment(self, account_id: str, user_id: str, record: Mapping[str, Any]) -> Record:
        """Upsert. A new record gets defaults under the given fields (and an `a_<n>` id when it
        has none); an existing one is replaced by exactly `record`. updated_at becomes now
        unless `record` sets it. Creates the account and user when missing."""
        self.add_user(account_id, user_id)
        records = self.accounts[account_id][user_id]
        aid = record.get("id") or self._new_id()
        if not isinstance(aid, str):
            raise ValueError("assignment id must be a string")
        existing = records.get(aid)
        new = dict(self._defaults(aid, user_id) if existing is None else {})
        new.update(copy.deepcopy(dict(record)))
        new["id"] = aid
        if "updated_at" not in record:
            new["updated_at"] = self._bumped(existing) if existing else new["updated_at"]
        records[aid] = new
        self._order(account_id).records.add((user_id, aid))
        return copy.deepcopy(new)

    def update_assignment(
        self, account_id: str, user_id: str, assignment_id: str, **fields: Any
    ) -> Record:
        """Merge top-level fields into a record; updated_at moves to now unless given."""
        if "id" in fields:
            raise ValueError("an assignment's id cannot change")
        record = self._get(account_id, user_id, assignment_id)
        merged = {**record, **copy.deepcopy(fields)}
        if "updated_at" not in fields:
            merged["updated_at"] = self._bumped(record)
        # assigning an existing key keeps the record's place in both listing orders
        self.accounts[account_id][user_id][assignment_id] = merged
        return copy.deepcopy(merged)

    def progress(self, account_id: str, user_id: str, assignment_id: str, pct: float) -> Record:
        """Set progress, with the status (and completion fields) a real LMS would derive."""
        pct = max(0.0, min(100.0, float(pct)))
        value = "completed" if pct >= 100 else "in_progress" if pct > 0 else "pending"
        fields: dict[str, Any] = {
            "progress": int(pct) if pct.is_integer() else pct,
            "status": {"value": value, "source_value": STATUS_SOURCE[value]},
            "completed_at": self.now_iso() if value == "completed" else None,
            "result": {"value": "Pass", "source_value": "passed"} if value == "completed" else None,
        }
        if value == "completed":
            fields["certificate_url"] = f"https://lms.example.com/certificates/{assignment_id}"
        return self.update_assignment(account_id, user_id, assignment_id, **fields)

    def delete_assignment(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        """Remove a record and return it."""
        self._get(account_id, user_id, assignment_id)
        self._order(account_id).records.discard((user_id, assignment_id))
        return self.accounts[account_id][user_id].pop(assignment_id)

    def get_assignment(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        """A copy of one record."""
        return copy.deepcopy(self._get(account_id, user_id, assignment_id))

    def assignments(self, account_id: str, user_id: str) -> list[Record]:
        """Copies of a user's records in listing order."""
        return copy.deepcopy(list(self._records(account_id, user_id).values()))

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready (for GET /_sim/state)."""
        return copy.deepcopy(
            {
                "accounts": {
                    a: {u: list(recs.values()) for u, recs in users.items()}
                    for a, users in self.accounts.items()
                },
                "users": {
                    a: [self._profile(a, u) for u in users] for a, users in self.accounts.items()
                },
            }
        )
