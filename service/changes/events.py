"""Event types and the webhook payload shape (docs/events.md, generated from the models in
service/contract/webhooks.py)."""

from __future__ import annotations

from typing import Any, Final, NotRequired, TypedDict

from service.resources import COMPLETIONS

CREATED: Final = "assignment.created"
UPDATED: Final = "assignment.updated"
STATUS_CHANGED: Final = "assignment.status_changed"
COMPLETED: Final = "assignment.completed"
PROGRESS_CHANGED: Final = "assignment.progress_changed"
DUE_DATE_CHANGED: Final = "assignment.due_date_changed"
OVERDUE: Final = "assignment.overdue"
REMOVED: Final = "assignment.removed"
COMPLETION_CREATED: Final = COMPLETIONS.created
COMPLETION_UPDATED: Final = COMPLETIONS.updated
COMPLETION_REMOVED: Final = COMPLETIONS.removed

# Sent only by `POST /admin/endpoints/{id}/test`, to that endpoint alone, never retried: not
# an assignment event, so no endpoint subscribes to it (`endpoints[].events` refuses it).
TEST: Final = "webhook.test"

# The assignment and completion events, which endpoints subscribe to.
EVENT_TYPES: Final = (
    CREATED,
    UPDATED,
    STATUS_CHANGED,
    COMPLETED,
    PROGRESS_CHANGED,
    DUE_DATE_CHANGED,
    OVERDUE,
    REMOVED,
    COMPLETION_CREATED,
    COMPLETION_UPDATED,
    COMPLETION_REMOVED,
)


class EventData(TypedDict):
    """An assignment's event carries `assignment_id` and `assignment`, a completion's
    `completion_id` and `completion` (resources.Resource.id_key and .singular)."""

    account_id: str
    user_id: str
    assignment_id: NotRequired[str]
    completion_id: NotRequired[str]
    sequence: int
    changed_fields: list[str]
    previous: dict[str, Any] | None
    assignment: NotRequired[dict[str, Any] | None]
    completion: NotRequired[dict[str, Any] | None]


class Event(TypedDict):
    """The webhook body, exactly as sent."""

    id: str
    type: str
    timestamp: str
    data: EventData


class TestEventData(TypedDict):
    """`data` of a `webhook.test` event: what it is, and for which endpoint."""

    test: bool  # always true
    endpoint_id: str
    message: str


class TestEvent(TypedDict):
    id: str
    type: str  # TEST
    timestamp: str
    data: TestEventData
