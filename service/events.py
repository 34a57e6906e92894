"""Event types and the webhook payload shape (README, Events)."""

from __future__ import annotations

from typing import Any, Final, TypedDict

CREATED: Final = "assignment.created"
UPDATED: Final = "assignment.updated"
STATUS_CHANGED: Final = "assignment.status_changed"
COMPLETED: Final = "assignment.completed"
PROGRESS_CHANGED: Final = "assignment.progress_changed"
DUE_DATE_CHANGED: Final = "assignment.due_date_changed"
OVERDUE: Final = "assignment.overdue"
REMOVED: Final = "assignment.removed"

EVENT_TYPES: Final = (
    CREATED,
    UPDATED,
    STATUS_CHANGED,
    COMPLETED,
    PROGRESS_CHANGED,
    DUE_DATE_CHANGED,
    OVERDUE,
    REMOVED,
)


class EventData(TypedDict):
    account_id: str
    user_id: str
    assignment_id: str
    sequence: int
    changed_fields: list[str]
    previous: dict[str, Any] | None
    assignment: dict[str, Any] | None


class Event(TypedDict):
    """The webhook body, exactly as sent."""

    id: str
    type: str
    timestamp: str
    data: EventData
