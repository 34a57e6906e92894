"""The simulated LMS's completion records (`lms_list_completions`): one user's and the
account's, each its own record beside the assignments (learning nobody assigned has a
completion and no assignment). Pure, no I/O.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from service.sim.listing import Keyset, Record
from service.sim.records import LMSRecords, NotFoundError, remote_user_id


class LMSCompletions(LMSRecords):
    """Completions by account, user and id, in a stable account-wide order of their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.completions: dict[str, dict[str, dict[str, Record]]] = {}
        self._completion_order: dict[str, Keyset[tuple[str, str]]] = {}
        self._next_completion = 1

    def _completions(self, account_id: str, user_id: str) -> dict[str, Record]:
        """A user's completions; NotFoundError for a user the LMS does not hold."""
        self._records(account_id, user_id)
        return self.completions.setdefault(account_id, {}).setdefault(user_id, {})

    def _completion_defaults(self, completion_id: str, user_id: str) -> Record:
        now = self.now_iso()
        n = "".join(ch for ch in completion_id if ch.isdigit()) or "0"
        return {
            "id": completion_id,
            "remote_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-completion:{completion_id}")),
            "external_reference": f"completion-{n}",
            "user_id": user_id,
            "remote_user_id": remote_user_id(user_id),
            "course_id": f"{n}-ENG-1",
            "content_id": None,
            "learning_object_id": f"lo_{n}",
            "learning_object_type": {"value": "course", "source_value": "COURSE"},
            "learning_object_external_reference": f"course-{n}",
            "completed_at": now,
            "result": {"value": "Pass", "source_value": "passed"},
            "score": None,
            "time_spent": None,
            "certificate_url": None,
            "created_at": now,
            "updated_at": now,
            "unified_custom_fields": {},
        }

    def put_completion(self, account_id: str, user_id: str, record: Mapping[str, Any]) -> Record:
        """Upsert a completion (defaults under the given fields for a new one, a `c_<n>` id
        when it has none); updated_at becomes now unless given. Creates the user if
        needed."""
        self.add_user(account_id, user_id)
        held = self._completions(account_id, user_id)
        cid = record.get("id")
        if cid is None:
            cid = f"c_{self._next_completion}"
            self._next_completion += 1
        if not isinstance(cid, str):
            raise ValueError("completion id must be a string")
        existing = held.get(cid)
        new = self._completion_defaults(cid, user_id) if existing is None else {}
        new.update(copy.deepcopy(dict(record)))
        new["id"] = cid
        if "updated_at" not in record and existing is not None:
            new["updated_at"] = self._bumped(existing)
        held[cid] = new
        self._completion_order.setdefault(account_id, Keyset()).add((user_id, cid))
        return copy.deepcopy(new)

    def update_completion(
        self, account_id: str, user_id: str, completion_id: str, **fields: Any
    ) -> Record:
        """Merge top-level fields into a completion; updated_at moves unless given."""
        held = self._completions(account_id, user_id)
        if completion_id not in held:
            raise NotFoundError(f"no completion {completion_id!r}")
        merged = {**held[completion_id], **copy.deepcopy(fields), "id": completion_id}
        if "updated_at" not in fields:
            merged["updated_at"] = self._bumped(held[completion_id])
        held[completion_id] = merged
        return copy.deepcopy(merged)

    def delete_completion(self, account_id: str, user_id: str, completion_id: str) -> Record:
        held = self._completions(account_id, user_id)
        if completion_id not in held:
            raise NotFoundError(f"no completion {completion_id!r}")
        self._completion_order[account_id].discard((user_id, completion_id))
        return held.pop(completion_id)

    # -- listing sources, as for assignments ---------------------------------------------

    def user_completions(
        self, account_id: str, user_id: str, after: int
    ) -> Iterator[tuple[int, Record]]:
        """A user's completions, offset-paged as the per-user assignments are."""
        records = list(self._completions(account_id, user_id).values())
        return ((i, records[i]) for i in range(after + 1, len(records)))

    def account_completions(self, account_id: str, after: int) -> Iterator[tuple[int, Record]]:
        """Every completion of the account in its stable order (a removed user's gone)."""
        held, users = self.completions.get(account_id, {}), self.accounts[account_id]
        order = self._completion_order.setdefault(account_id, Keyset())
        return (
            (position, record)
            for position, (u, cid) in order.after(after)
            if u in users and (record := held.get(u, {}).get(cid)) is not None
        )
