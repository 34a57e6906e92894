"""The webhook bodies: one model per event type, generated from one `EventType` entry each
in CATALOG (adding a type is adding an entry). `/openapi.json` publishes them as its
`webhooks` section (what Svix's and Convoy's importers read), `docs/events.md` lists them,
and the suite checks every body it delivers against them.

The models describe the wire; detection builds its bodies as the TypedDicts of
`service/changes/events.py` (no validation on the hot path) and the suite proves they agree."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.changes import events as ev

EventId = Annotated[
    str,
    Field(
        pattern=r"^evt_[0-9a-f]{32}$",
        description="The event id, also sent as `webhook-id`: the same change always has "
        "the same id, on every retry and after any restart. Deduplicate on it.",
    ),
]
Timestamp = Annotated[
    str,
    Field(
        json_schema_extra={"format": "date-time"},
        description="When the change was detected: ISO 8601, UTC, milliseconds.",
    ),
]
Sequence = Annotated[
    int,
    Field(
        ge=1,
        description="Counts the detected changes of one record (1 when first seen); every "
        "event of one change shares it.",
    ),
]
ChangedFields = Annotated[
    list[str],
    Field(
        description="The top-level fields that differ, sorted (every field for `created`, "
        "none for `overdue`); `updated_at` alone is no change.",
    ),
]
# a record as the LMS (through StackOne) returned it: every field, unknown ones too
Record = dict[str, Any]


class Strict(BaseModel):
    """Exactly these fields: a body with more, or fewer, is not one the service sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AssignmentData(Strict):
    account_id: str
    user_id: str
    assignment_id: str
    sequence: Sequence
    changed_fields: ChangedFields
    previous: Record | None = Field(
        description="The assignment as last seen; null for `created` and `overdue`."
    )
    assignment: Record | None = Field(
        description="The assignment as received, every field, unknown ones too; null for `removed`."
    )


class CompletionData(Strict):
    account_id: str
    user_id: str
    completion_id: str
    sequence: Sequence
    changed_fields: ChangedFields
    previous: Record | None = Field(description="The completion as last seen; null for `created`.")
    completion: Record | None = Field(
        description="The completion record as received, every field; null for `removed`."
    )


class TestData(Strict):
    test: Literal[True]
    endpoint_id: str = Field(description="The endpoint it was sent to, alone.")
    message: str


class Envelope(Strict):
    """What every webhook body holds; each event type narrows `type` and `data`."""

    id: EventId
    type: str
    timestamp: Timestamp
    data: Strict


@dataclass(frozen=True)
class EventType:
    """One entry of the catalog: the type's name, its `data`, when it is sent, and an
    example of its `data`."""

    name: str
    data: type[Strict]
    when: str
    example: dict[str, Any] = field(compare=False)

    @property
    def model_name(self) -> str:
        """`assignment.status_changed` → `AssignmentStatusChanged`."""
        return "".join(part.capitalize() for part in re.split(r"[._]", self.name))

    @cached_property
    def model(self) -> type[Envelope]:
        """The body's model: the envelope with this `type` and this `data`."""
        name: Any = Literal[self.name]  # a type made at run time: the JSON Schema's const
        model: type[Envelope] = create_model(
            self.model_name,
            __base__=Envelope,
            __doc__=f"`{self.name}`: {self.when}",
            type=(name, ...),
            data=(self.data, ...),
        )
        return model

    def example_body(self) -> dict[str, Any]:
        return {
            "id": "evt_3f1c9a0d2b7e4c5a8f6e1d2c3b4a5968",
            "type": self.name,
            "timestamp": "2026-11-28T06:00:00.123Z",
            "data": self.example,
        }


_ASSIGNMENT_BEFORE = {
    "id": "123456",
    "status": {"value": "in_progress", "source_value": "InProgress"},
    "progress": 60,
    "due_date": "2026-12-01T00:00:00.000Z",
    "completed_at": None,
    "updated_at": "2026-11-28T05:40:00.000Z",
}
_ASSIGNMENT_AFTER = {
    **_ASSIGNMENT_BEFORE,
    "status": {"value": "completed", "source_value": "Completed"},
    "progress": 100,
    "completed_at": "2026-11-28T05:59:58.000Z",
    "updated_at": "2026-11-28T05:59:58.000Z",
}
_COMPLETION = {
    "id": "c_789",
    "user_id": "c28xyrc55866bvuv",
    "content_id": "course_42",
    "completed_at": "2026-11-28T05:59:58.000Z",
    "result": "passed",
    "score": {"percentage": 92},
    "certificate_url": "https://lms.example.com/certificates/789",
}


def _assignment(
    changed: list[str], *, previous: bool = True, current: bool = True, sequence: int = 4
) -> dict[str, Any]:
    return {
        "account_id": "acc_123",
        "user_id": "c28xyrc55866bvuv",
        "assignment_id": "123456",
        "sequence": sequence,
        "changed_fields": changed,
        "previous": _ASSIGNMENT_BEFORE if previous else None,
        "assignment": (_ASSIGNMENT_AFTER if previous else _ASSIGNMENT_BEFORE) if current else None,
    }


def _completion(
    changed: list[str], *, previous: bool = True, current: bool = True
) -> dict[str, Any]:
    return {
        "account_id": "acc_123",
        "user_id": "c28xyrc55866bvuv",
        "completion_id": "c_789",
        "sequence": 2 if previous else 1,
        "changed_fields": changed,
        "previous": {**_COMPLETION, "score": {"percentage": 85}} if previous else None,
        "completion": _COMPLETION if current else None,
    }


_CHANGED = ["completed_at", "progress", "status"]
_CREATED = sorted(_ASSIGNMENT_BEFORE)

CATALOG: tuple[EventType, ...] = (
    EventType(
        ev.CREATED,
        AssignmentData,
        "an assignment appears after the user's baseline",
        _assignment(_CREATED, previous=False, sequence=1),
    ),
    EventType(
        ev.UPDATED,
        AssignmentData,
        "any change of an existing assignment (always, beside the specific types)",
        _assignment(_CHANGED),
    ),
    EventType(
        ev.STATUS_CHANGED,
        AssignmentData,
        "`status.value` differs",
        _assignment(_CHANGED),
    ),
    EventType(
        ev.COMPLETED,
        AssignmentData,
        "`status.value` becomes `completed` (also when first seen completed after the "
        "baseline); once per transition",
        _assignment(_CHANGED),
    ),
    EventType(
        ev.PROGRESS_CHANGED,
        AssignmentData,
        "`progress` differs",
        _assignment(_CHANGED),
    ),
    EventType(
        ev.DUE_DATE_CHANGED,
        AssignmentData,
        "`due_date` differs",
        {**_assignment(["due_date"]), "assignment": _ASSIGNMENT_BEFORE},
    ),
    EventType(
        ev.OVERDUE,
        AssignmentData,
        "`due_date` has passed and the assignment is not completed; once per due date "
        "(`changed_fields` empty, `previous` null)",
        _assignment([], previous=False),
    ),
    EventType(
        ev.REMOVED,
        AssignmentData,
        "a complete full read no longer returns the assignment (`assignment` null)",
        {**_assignment([]), "previous": _ASSIGNMENT_AFTER, "assignment": None},
    ),
    EventType(
        "completion.created",
        CompletionData,
        "a completion record appears after the baseline",
        _completion(sorted(_COMPLETION), previous=False),
    ),
    EventType(
        "completion.updated",
        CompletionData,
        "an existing completion record changes (e.g. `result`, `score`, `certificate_url`)",
        _completion(["score"]),
    ),
    EventType(
        "completion.removed",
        CompletionData,
        "a complete full read no longer returns the completion (`completion` null)",
        {**_completion([]), "previous": _COMPLETION, "completion": None},
    ),
    EventType(
        ev.TEST,
        TestData,
        "sent only by `POST /admin/endpoints/{id}/test`, to that endpoint alone; never "
        "retried, and no endpoint subscribes to it",
        {
            "test": True,
            "endpoint_id": "hr-system",
            "message": "A test event sent from lms-webhooks' admin API to this endpoint "
            "alone. It is not an assignment change and is never retried.",
        },
    ),
)

BY_NAME: dict[str, EventType] = {entry.name: entry for entry in CATALOG}
