"""The records an account's users have that the service tracks (`accounts[].track`): each
one read, snapshotted, compared and committed by the same machinery, told apart only by
what is described here. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Resource:
    """One kind of tracked record."""

    name: str  # as `track` names it, and the last segment of its upstream routes
    singular: str  # its events' prefix (`assignment.created`) and its `data` keys
    # a read's own fields in a reader's state hash (watermark, baseline, last full read) are
    # stored under this prefix; the reader's (last poll, failures) are shared
    state_prefix: str
    # the events beyond created/updated/removed (status, progress, due date, overdue)
    detailed: bool = False

    @property
    def id_key(self) -> str:
        """`data`'s key for the record's id (`assignment_id`)."""
        return f"{self.singular}_id"

    @property
    def account_path(self) -> str:
        """The account-wide route (the change feed)."""
        return f"/unified/lms/{self.name}"

    def user_path(self, quoted_user_id: str) -> str:
        """One user's route; `quoted_user_id` already URL-encoded."""
        return f"/unified/lms/users/{quoted_user_id}/{self.name}"

    @property
    def created(self) -> str:
        return f"{self.singular}.created"

    @property
    def updated(self) -> str:
        return f"{self.singular}.updated"

    @property
    def removed(self) -> str:
        return f"{self.singular}.removed"

    def owns(self, event_type: str) -> bool:
        """An event type of this resource's records."""
        return event_type.startswith(self.singular + ".")


# the state prefix of assignments is empty: their fields keep the names 0.1 wrote
ASSIGNMENTS = Resource("assignments", "assignment", "", detailed=True)
COMPLETIONS = Resource("completions", "completion", "completions.")
RESOURCES = {r.name: r for r in (ASSIGNMENTS, COMPLETIONS)}
DEFAULT_TRACK: Final = "assignments"  # ASSIGNMENTS.name, a literal for config.TrackedName


def tracked(names: Iterable[str] | None) -> tuple[Resource, ...]:
    """The resources `track` names, assignments first (a poll reads them in this order);
    None: the default."""
    wanted = {DEFAULT_TRACK} if names is None else set(names)
    return tuple(r for r in RESOURCES.values() if r.name in wanted)


def resource_of(event_type: str) -> Resource | None:
    """The resource an event type belongs to (None: `webhook.test`)."""
    return next((r for r in RESOURCES.values() if r.owns(event_type)), None)
