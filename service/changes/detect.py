"""Change detection, pure: previous snapshot + current record → new snapshot and events.

No I/O and no clock: `now` is passed in. The same inputs always give the same event ids, so a
poll that crashed before its commit and runs again produces exactly the events it would have.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, NamedTuple, TypeVar, cast

import orjson

from service.changes import events as ev
from service.changes.events import Event, EventData
from service.resources import ASSIGNMENTS, Resource
from service.timefmt import iso_ms, parse_iso

_EPOCH = datetime(1970, 1, 2, tzinfo=UTC)
_NEVER = datetime.min.replace(tzinfo=UTC)
K = TypeVar("K")
# A difference in these alone is no change: providers bump updated_at on reads and syncs.
IGNORED_FIELDS = frozenset({"updated_at"})
_MISSING = object()


class Snapshot(NamedTuple):  # a tuple: built for every stored record on every poll
    """What we last saw of one record, and how many changes of it we have counted."""

    sequence: int
    # None: a tombstone. The record was removed; its sequence goes on if it comes back,
    # so a re-created record never reuses an earlier event id.
    record: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Change:
    """One detected change: the snapshot to store and the events to send, committed together."""

    record_id: str  # the assignment's or completion's id
    snapshot: Snapshot
    events: list[Event] = field(default_factory=list)
    resource: Resource = ASSIGNMENTS


def event_id(
    account_id: str, user_id: str, assignment_id: str, sequence: int, kind: str, content: str
) -> str:
    """Deterministic: the same change of the same record always gets the same id, and a
    different change never one of its ids. `kind` names the resource (`completion.created`),
    so a completion's ids never equal an assignment's, even one with the same id.
    `content`: the changed record's digest (`record_digest`). The sequence alone named a
    change until a Redis failover lost a commit: the next, different change then counted
    the same sequence, took the lost one's ids, and a receiver deduplicating on
    `webhook-id` dropped it."""
    key = "\x1f".join((account_id, user_id, assignment_id, str(sequence), kind, content))
    return "evt_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def record_digest(record: dict[str, Any]) -> str:
    """What a record says, as a short digest: every field but those whose difference is no
    change (`updated_at`), so a change read again with only its stamp moved keeps its ids."""
    content = {k: v for k, v in record.items() if k not in IGNORED_FIELDS}
    try:
        raw = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError: a huge integer, a lone surrogate
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        raw = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:16]


def changed_fields(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Top-level fields that differ (a field present on one side only differs), sorted."""
    keys = previous.keys() | current.keys()
    return sorted(
        k for k in keys - IGNORED_FIELDS if previous.get(k, _MISSING) != current.get(k, _MISSING)
    )


def status_value(record: dict[str, Any] | None) -> Any:
    status = (record or {}).get("status")
    return status.get("value") if isinstance(status, dict) else None


def _data(
    resource: Resource,
    account_id: str,
    user_id: str,
    record_id: str,
    sequence: int,
    fields: list[str],
    previous: dict[str, Any] | None,
    current: dict[str, Any] | None,
) -> EventData:
    data = {
        "account_id": account_id,
        "user_id": user_id,
        resource.id_key: record_id,
        "sequence": sequence,
        "changed_fields": fields,
        "previous": previous,
        resource.singular: current,
    }
    return cast(EventData, data)


def _events(
    kinds: list[str], data: EventData, record_id: str, content: str, now: datetime
) -> list[Event]:
    """The events of one change; they share their `data` (never changed afterwards).
    `content`: the digest of the record that changed (`record_digest`)."""
    account_id, user_id = data["account_id"], data["user_id"]
    timestamp = iso_ms(now)
    return [
        {
            "id": event_id(account_id, user_id, record_id, data["sequence"], kind, content),
            "type": kind,
            "timestamp": timestamp,
            "data": data,
        }
        for kind in kinds
    ]


def event_types_for(
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    fields: list[str],
    resource: Resource = ASSIGNMENTS,
) -> list[str]:
    """Which event types one change fires (docs/events.md lists them, docs/architecture.md
    says when)."""
    if not resource.detailed:
        return [resource.created if previous is None else resource.updated]
    completed = status_value(current) == "completed"
    if previous is None:
        return [ev.CREATED, ev.COMPLETED] if completed else [ev.CREATED]
    kinds = [ev.UPDATED]
    if status_value(previous) != status_value(current):
        kinds.append(ev.STATUS_CHANGED)
        if completed:
            kinds.append(ev.COMPLETED)
    if "progress" in fields:
        kinds.append(ev.PROGRESS_CHANGED)
    if "due_date" in fields:
        kinds.append(ev.DUE_DATE_CHANGED)
    return kinds


def detect(
    account_id: str,
    user_id: str,
    record_id: str,
    previous: Snapshot | None,
    current: dict[str, Any],
    *,
    now: datetime,
    emit: bool,
    resource: Resource = ASSIGNMENTS,
) -> Change | None:
    """Compare one record with its snapshot. None when nothing but `updated_at` differs.

    `emit` is False while a user's baseline is taken (first sync without emit_on_first_sync):
    the snapshot is stored, no event is sent.
    """
    before = previous.record if previous else None
    if before is None:  # first seen, or back after a removal
        fields = sorted(current)
    elif before == current:  # the common case of a full resync, at C speed
        return None
    else:
        fields = changed_fields(before, current)
        if not fields:
            return None
    sequence = previous.sequence + 1 if previous else 1
    snapshot = Snapshot(sequence, current)
    if not emit:
        return Change(record_id, snapshot, resource=resource)
    data = _data(resource, account_id, user_id, record_id, sequence, fields, before, current)
    kinds = event_types_for(before, current, fields, resource)
    found = _events(kinds, data, record_id, record_digest(current), now)
    return Change(record_id, snapshot, found, resource)


def detect_removed(
    account_id: str,
    user_id: str,
    record_id: str,
    previous: Snapshot,
    *,
    now: datetime,
    emit: bool,
    resource: Resource = ASSIGNMENTS,
) -> Change:
    """A record a complete full read no longer returns: a tombstone and its event."""
    sequence = previous.sequence + 1
    tombstone = Snapshot(sequence, None)
    if not emit:
        return Change(record_id, tombstone, resource=resource)
    data = _data(resource, account_id, user_id, record_id, sequence, [], previous.record, None)
    # a removal's record is the one that went (a tombstone's has none)
    content = record_digest(previous.record) if previous.record is not None else "-"
    gone = _events([resource.removed], data, record_id, content, now)
    return Change(record_id, tombstone, gone, resource)


def overdue_due_ms(record: dict[str, Any] | None) -> int | None:
    """When this assignment becomes overdue (ms), or None: completed, removed, no due date."""
    if record is None or status_value(record) == "completed":
        return None
    due = parse_iso(record.get("due_date"))
    return int(due.timestamp() * 1000) if due is not None and due >= _EPOCH else None


def overdue_watch(
    previous: Snapshot | None, current: Snapshot, now: datetime, emit: bool
) -> tuple[int | None, int | None]:
    """(due date to stop watching, due date to start watching) for one committed change.

    A due date is watched once: an unchanged due date is left as it is, whether its overdue
    event is still to come or already sent. One already past is watched (and so reported at
    once) only when events are emitted, not while a baseline is taken.
    """
    old = overdue_due_ms(previous.record) if previous else None
    new = overdue_due_ms(current.record)
    if old == new:
        return None, None
    if new is not None and not emit and new <= now.timestamp() * 1000:
        new = None
    return old, new


def detect_overdue(
    account_id: str,
    user_id: str,
    assignment_id: str,
    snapshot: Snapshot,
    due_ms: int,
    *,
    now: datetime,
) -> Event | None:
    """`assignment.overdue`, once per assignment and due date; None when no longer true."""
    if snapshot.record is None or overdue_due_ms(snapshot.record) != due_ms:
        return None
    if due_ms > now.timestamp() * 1000:
        return None
    data = _data(
        ASSIGNMENTS,
        account_id,
        user_id,
        assignment_id,
        snapshot.sequence,
        [],
        None,
        snapshot.record,
    )
    return {
        # keyed by the due date, not the sequence or the record: once per due date, whatever
        # else changes meanwhile
        "id": event_id(account_id, user_id, assignment_id, due_ms, ev.OVERDUE, "due"),
        "type": ev.OVERDUE,
        "timestamp": iso_ms(now),
        "data": data,
    }


def found_at_ms(served_at: datetime | None, started: float) -> int:
    """When a listing found what it found, on the upstream's clock (which stamps records),
    or ours (`started`, epoch s) when it gave none. An HTTP date drops the fraction of its
    second: the listing may have been answered up to a second later."""
    if served_at is None:
        return int(started * 1000)
    return int(served_at.timestamp() * 1000) + 999


def changed_since_found(record: dict[str, Any], found_ms: int | None) -> bool:
    """A record its user's baseline must not absorb: stamped after the user was found (a
    user found in a bulk is baselined minutes later; what it did meanwhile is a change)."""
    if not found_ms:
        return False
    moment = parse_iso(record.get("updated_at"))
    return moment is not None and moment.timestamp() * 1000 > found_ms


def version_time(record: dict[str, Any]) -> datetime:
    """A record's `updated_at`, to choose between two versions of one assignment listed in
    one read; unreadable: the oldest."""
    return parse_iso(record.get("updated_at")) or _NEVER


class LatestVersions(Generic[K]):
    """One version of each record per read: the one updated last, on a tie the one listed
    last. A provider may list an id twice (in one page or across pages, a record updated
    mid-read moving to a later page); detecting both versions would see two changes, and
    where the duplicate persists, a change back and forth on every read."""

    def __init__(self) -> None:
        self.records: dict[K, dict[str, Any]] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.records)

    def add(self, key: K, record: dict[str, Any]) -> None:
        held = self.records.get(key)
        if held is not None:
            self.duplicates += 1
            if version_time(record) < version_time(held):
                return
        self.records[key] = record

    def take(self) -> dict[K, dict[str, Any]]:
        """The versions kept so far (in the order first listed); the buffer starts again."""
        taken, self.records = self.records, {}
        return taken


# A stamp further ahead of the upstream's clock than this is not believed. The upstream's
# clock is its answer's `Date` (StackOne's, right), not ours and not the provider's, which
# may run minutes behind: a stamp such as 9999-12-31 taken as the watermark (or capped at
# our clock) put the next read's bound past every later change of a lagging provider,
# hiding them until the next full read.
PLAUSIBLE_AHEAD = timedelta(seconds=60)


class Watermark:
    """The newest plausible `updated_at` of one read, never behind the previous watermark;
    stamps later than the answer's `Date` plus PLAUSIBLE_AHEAD are counted, not taken.

    The next query reads from this watermark minus `polling.overlap`, so records committed
    late upstream are read again.
    """

    __slots__ = ("implausible", "newest", "newest_implausible")

    def __init__(self, previous: datetime | None) -> None:
        self.newest = previous
        self.implausible = 0  # stamps ignored as too far ahead
        self.newest_implausible: datetime | None = None

    def see(self, values: Iterable[object], served_at: datetime) -> None:
        """The stamps of one answer; `served_at`: its `Date` (the read's start on our clock
        when it had none)."""
        bound = served_at + PLAUSIBLE_AHEAD
        previous = newest = self.newest
        for value in values:
            moment = parse_iso(value)
            if moment is None or moment < _EPOCH:  # zero values such as 0001-01-01: unknown
                continue
            if moment > bound:
                self.implausible += 1
                if self.newest_implausible is None or moment > self.newest_implausible:
                    self.newest_implausible = moment
            elif newest is None or moment > newest:
                newest = moment
        # a stamp a little ahead is believed, not followed: past the answer's `Date` the
        # next read's overlap would no longer reach back to records committed late
        if newest is not None and newest > served_at:
            newest = served_at if previous is None else max(previous, served_at)
        self.newest = newest


# an HTTP `Date` is truncated to the second: the answer was served up to this much later
DATE_RESOLUTION = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class FeedWindow:
    """An account feed's watermark (provider clock) with its anchor (StackOne's clock): at
    every instant `t` from the anchor on, the provider's clock had reached at least
    `watermark + (t - anchor)`. A provider's stamps come from its own clock, which may lag
    StackOne's by minutes; only the time elapsed on StackOne's clock is added to them, so a
    quiet feed's window moves on with time without outrunning a lagging provider. None:
    unknown (no anchor: the watermark moves with stamps only, until a dated read)."""

    watermark: datetime | None
    anchor: datetime | None = None

    def after_read(
        self, newest: datetime | None, first_date: datetime | None, last_date: datetime | None
    ) -> FeedWindow:
        """The window a committed read leaves. `newest`: its Watermark's (never behind this
        watermark); `first_date`, `last_date`: the `Date` of its first and last answer
        (None: that answer had none).

        A stamp newer than the window moved on: its records were written before the last
        answer was served, at most DATE_RESOLUTION after its `Date`, which anchors it.
        Otherwise the watermark moves on by the time elapsed between the anchor and the
        first answer (the read's start, when a change it may miss could be made), along the
        same line: a bulk of records sharing one stamp is read again for `overlap`, then
        no more, while nothing newer comes."""
        stamped = FeedWindow(
            newest, None if newest is None or last_date is None else last_date + DATE_RESOLUTION
        )
        if self.watermark is None or self.anchor is None or first_date is None:
            return stamped
        elapsed = max(timedelta(0), first_date - self.anchor)
        # never past the answer's `Date`, as the stamps (Watermark)
        moved = min(self.watermark + elapsed, max(self.watermark, first_date))
        if newest is not None and newest > moved:
            return stamped
        return FeedWindow(moved, max(self.anchor, first_date))


def updated_after(watermark: datetime | None, overlap_seconds: float) -> datetime | None:
    """The `filter[updated_after]` of the next incremental poll."""
    return None if watermark is None else watermark - timedelta(seconds=overlap_seconds)
