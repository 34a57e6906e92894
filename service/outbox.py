"""What a poll (or an overdue check) will commit, pure: changes, the events routed to the
endpoints that want them, and the due dates to watch. The store commits an outbox in one
atomic step; nothing here touches Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from service import jsonfmt
from service.config import EndpointSettings
from service.detect import Change, Snapshot, overdue_watch
from service.events import Event

# endpoint id → [(event id, body as JSON, due ms)]
RoutedEvents = dict[str, list[tuple[str, bytes | str, int]]]


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
) -> None:
    """Queue each event for every endpoint that wants it (the body serialized once)."""
    for event in events:
        body: bytes | None = None  # bytes all the way to Redis: no decode and encode again
        for endpoint in endpoints:
            if endpoint.wants(event["type"], event["data"]["account_id"]):
                body = body or jsonfmt.dumps_bytes(event)
                into.setdefault(endpoint.id, []).append((event["id"], body, due_ms))


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
        route_events(change.events, endpoints, due_ms, self.events)
        stop, start = overdue_watch(previous, change.snapshot, now, emit)
        if stop is not None:
            self.unwatch.append(OverdueWatch(account_id, user_id, change.assignment_id, stop))
        if start is not None:
            self.watch.append(OverdueWatch(account_id, user_id, change.assignment_id, start))
