"""What a poll (or an overdue check) will commit, pure: changes, the events routed to the
endpoints that want them, and the due dates to watch. The store commits an outbox in one
atomic step; nothing here touches Redis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from service import jsonfmt
from service.changes.detect import Change, Snapshot, overdue_watch
from service.changes.events import Event
from service.config import EndpointSettings
from service.resources import resource_of


class EventHead(NamedTuple):
    """What the delivery log keeps of an event beside its body, to list and filter it by."""

    type: str
    timestamp: str  # the event's own `timestamp` (ISO 8601)
    account_id: str | None
    user_id: str | None
    record_id: str | None  # the assignment's or completion's (the type says which)

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> EventHead:
        """Of an event's body as parsed; what it lacks (a `webhook.test`) is None."""
        data = event.get("data")
        data = data if isinstance(data, Mapping) else {}

        def text(value: object) -> str | None:
            return value if isinstance(value, str) else None

        kind = text(event.get("type")) or ""
        resource = resource_of(kind)
        return cls(
            kind,
            text(event.get("timestamp")) or "",
            text(data.get("account_id")),
            text(data.get("user_id")),
            text(data.get(resource.id_key)) if resource is not None else None,
        )


class Queued(NamedTuple):
    """One event queued for one endpoint."""

    event_id: str
    body: bytes | str  # the JSON sent, serialized once for every endpoint
    due_ms: int  # when it is due, which is also when the log records it
    head: EventHead | None = None  # None: read from the body when committed (tools, tests)


# endpoint id → the events queued for it
RoutedEvents = dict[str, list[Queued]]


class OverdueWatch(NamedTuple):
    """One assignment's due date, watched until it passes (then `assignment.overdue`)."""

    account_id: str
    user_id: str
    assignment_id: str
    due_ms: int


def route_events(
    events: Iterable[Event],
    endpoints: Iterable[EndpointSettings],
    due_ms: int,
    into: RoutedEvents,
    record_id: str,
) -> None:
    """Queue each event of one record's change for every endpoint that wants it (the body
    serialized once)."""
    for event in events:
        body: bytes | None = None  # bytes all the way to Redis: no decode and encode again
        head: EventHead | None = None
        for endpoint in endpoints:
            if endpoint.wants(event["type"], event["data"]["account_id"]):
                if body is None or head is None:
                    body = jsonfmt.dumps_bytes(event)
                    data = event["data"]
                    head = EventHead(
                        event["type"],
                        event["timestamp"],
                        data["account_id"],
                        data["user_id"],
                        record_id,
                    )
                into.setdefault(endpoint.id, []).append(Queued(event["id"], body, due_ms, head))


@dataclass(slots=True)
class Outbox:
    """Changes waiting for their commit, with each event routed to its endpoints."""

    changes: list[Change] = field(default_factory=list)
    events: RoutedEvents = field(default_factory=dict)
    watch: list[OverdueWatch] = field(default_factory=list)
    unwatch: list[OverdueWatch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changes)

    def add(
        self,
        account_id: str,
        user_id: str,
        change: Change,
        previous: Snapshot | None,
        *,
        now: datetime,
        due_ms: int,
        emit: bool,
        endpoints: Iterable[EndpointSettings],
    ) -> None:
        """A change joins the outbox: its events, routed (due at `due_ms`, `now` in ms: a
        poll's changes share it, computed once), and its overdue watch."""
        self.changes.append(change)
        route_events(change.events, endpoints, due_ms, self.events, change.record_id)
        if not change.resource.detailed:  # no due dates: nothing to watch
            return
        stop, start = overdue_watch(previous, change.snapshot, now, emit)
        if stop is not None:
            self.unwatch.append(OverdueWatch(account_id, user_id, change.record_id, stop))
        if start is not None:
            self.watch.append(OverdueWatch(account_id, user_id, change.record_id, start))
