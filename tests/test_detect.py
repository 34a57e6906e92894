"""The pure detector: which events one change fires, and with what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.changes import events as ev
from service.changes.detect import (
    FeedWindow,
    Snapshot,
    Watermark,
    changed_fields,
    detect,
    detect_overdue,
    detect_removed,
    event_id,
    overdue_watch,
    record_digest,
    updated_after,
)

NOW = datetime(2026, 11, 28, 6, 0, 0, 123000, tzinfo=UTC)


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "123456",
        "status": {"value": "pending", "source_value": "NotStarted"},
        "progress": 0,
        "due_date": "2026-12-31T00:00:00.000Z",
        "completed_at": None,
        "updated_at": "2026-11-01T00:00:00.000Z",
        "x_provider_extra": {"kept": True},
    }
    base.update(fields)
    return base


def status(value: str) -> dict[str, Any]:
    return {"value": value, "source_value": value.upper()}


CASES = [
    # (name, previous record or None, current record, expected types, expected changed fields)
    ("created", None, record(), [ev.CREATED], sorted(record())),
    (
        "created completed",
        None,
        record(status=status("completed")),
        [ev.CREATED, ev.COMPLETED],
        sorted(record()),
    ),
    ("updated_at alone", record(), record(updated_at="2026-11-02T00:00:00.000Z"), [], []),
    (
        "progress",
        record(),
        record(progress=40, updated_at="2026-11-02T00:00:00.000Z"),
        [ev.UPDATED, ev.PROGRESS_CHANGED],
        ["progress"],
    ),
    (
        "status to in_progress",
        record(),
        record(status=status("in_progress"), progress=10),
        [ev.UPDATED, ev.STATUS_CHANGED, ev.PROGRESS_CHANGED],
        ["progress", "status"],
    ),
    (
        "completion",
        record(status=status("in_progress"), progress=50),
        record(status=status("completed"), progress=100, completed_at="2026-11-28T05:00:00.000Z"),
        [ev.UPDATED, ev.STATUS_CHANGED, ev.COMPLETED, ev.PROGRESS_CHANGED],
        ["completed_at", "progress", "status"],
    ),
    (
        "still completed, certificate added",
        record(status=status("completed")),
        record(status=status("completed"), certificate_url="https://lms/cert/1"),
        [ev.UPDATED],
        ["certificate_url"],
    ),
    (
        "source_value only: no status_changed",
        record(status={"value": "pending", "source_value": "A"}),
        record(status={"value": "pending", "source_value": "B"}),
        [ev.UPDATED],
        ["status"],
    ),
    (
        "due date",
        record(),
        record(due_date="2027-01-31T00:00:00.000Z"),
        [ev.UPDATED, ev.DUE_DATE_CHANGED],
        ["due_date"],
    ),
    (
        "unknown field appears",
        record(),
        record(brand_new_field="x"),
        [ev.UPDATED],
        ["brand_new_field"],
    ),
    (
        "unknown status value passes through",
        record(),
        record(status=status("archived_by_provider")),
        [ev.UPDATED, ev.STATUS_CHANGED],
        ["status"],
    ),
    (
        "reopened: completed back to in_progress",
        record(status=status("completed")),
        record(status=status("in_progress")),
        [ev.UPDATED, ev.STATUS_CHANGED],
        ["status"],
    ),
]


@pytest.mark.parametrize(
    ("name", "before", "after", "types", "fields"), CASES, ids=[c[0] for c in CASES]
)
def test_event_table(
    name: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    types: list[str],
    fields: list[str],
) -> None:
    previous = Snapshot(3, before) if before is not None else None
    change = detect("acc_1", "u_1", "123456", previous, after, now=NOW, emit=True)
    if not types:
        assert change is None
        return
    assert change is not None
    assert [e["type"] for e in change.events] == types
    sequence = 1 if before is None else 4
    assert change.snapshot == Snapshot(sequence, after)
    for event in change.events:
        data = event["data"]
        assert data["sequence"] == sequence
        assert data["changed_fields"] == fields
        assert data["previous"] == before
        assert data["assignment"] is after  # every field as received, unknown ones too
        assert (data["account_id"], data["user_id"], data["assignment_id"]) == (
            "acc_1",
            "u_1",
            "123456",
        )
        assert event["timestamp"] == "2026-11-28T06:00:00.123Z"
        assert event["id"] == event_id(
            "acc_1", "u_1", "123456", sequence, event["type"], record_digest(after)
        )
    assert len({e["id"] for e in change.events}) == len(change.events)


def test_baseline_stores_snapshot_without_events() -> None:
    change = detect("a", "u", "1", None, record(), now=NOW, emit=False)
    assert change is not None and change.events == [] and change.snapshot == Snapshot(1, record())
    later = detect("a", "u", "1", Snapshot(1, record()), record(progress=5), now=NOW, emit=False)
    assert later is not None and later.events == [] and later.snapshot is not None
    assert later.snapshot.sequence == 2


def test_same_change_same_ids_whenever_detected() -> None:
    first = detect("a", "u", "1", Snapshot(1, record()), record(progress=5), now=NOW, emit=True)
    again = detect(
        "a",
        "u",
        "1",
        Snapshot(1, record()),
        record(progress=5),
        now=NOW + timedelta(minutes=5),
        emit=True,
    )
    assert first is not None and again is not None
    assert [e["id"] for e in first.events] == [e["id"] for e in again.events]
    other_user = detect(
        "a", "u2", "1", Snapshot(1, record()), record(progress=5), now=NOW, emit=True
    )
    assert other_user is not None
    assert not {e["id"] for e in first.events} & {e["id"] for e in other_user.events}


def test_same_change_read_again_with_only_its_stamp_moved_keeps_its_ids() -> None:
    before = Snapshot(1, record())
    first = detect("a", "u", "1", before, record(progress=5), now=NOW, emit=True)
    restamped = record(progress=5, updated_at="2026-11-29T00:00:00.000Z")
    again = detect("a", "u", "1", before, restamped, now=NOW, emit=True)
    assert first is not None and again is not None
    assert [e["id"] for e in first.events] == [e["id"] for e in again.events]


def test_a_different_change_with_a_lost_commits_sequence_never_takes_its_ids() -> None:
    """A failover lost the commit of change 2 (progress 40): the snapshot is back at 1,
    and the next change (completed) counts sequence 2 again. Its ids must differ, or a
    receiver that saw the lost change deduplicates the real one away."""
    before = Snapshot(1, record())
    lost = detect("a", "u", "1", before, record(progress=40), now=NOW, emit=True)
    done = record(status=status("completed"), progress=100)
    later = detect("a", "u", "1", before, done, now=NOW, emit=True)
    assert lost is not None and later is not None
    assert lost.snapshot.sequence == later.snapshot.sequence == 2
    assert not {e["id"] for e in lost.events} & {e["id"] for e in later.events}
    gone = detect_removed("a", "u", "1", Snapshot(2, record(progress=40)), now=NOW, emit=True)
    gone_other = detect_removed("a", "u", "1", Snapshot(2, done), now=NOW, emit=True)
    assert gone.events[0]["id"] != gone_other.events[0]["id"]


def test_removed_leaves_a_tombstone_and_a_comeback_continues_the_sequence() -> None:
    change = detect_removed("a", "u", "1", Snapshot(2, record()), now=NOW, emit=True)
    assert change.snapshot == Snapshot(3, None)
    [event] = change.events
    assert event["type"] == ev.REMOVED
    assert event["data"]["sequence"] == 3
    assert event["data"]["previous"] == record() and event["data"]["assignment"] is None
    back = detect("a", "u", "1", change.snapshot, record(), now=NOW, emit=True)
    assert back is not None and back.snapshot == Snapshot(4, record())
    assert [e["type"] for e in back.events] == [ev.CREATED]
    assert back.events[0]["data"]["previous"] is None
    first_created = event_id("a", "u", "1", 1, ev.CREATED, record_digest(record()))
    assert back.events[0]["id"] != first_created  # never an id receivers have deduplicated
    silent = detect_removed("a", "u", "1", Snapshot(2, record()), now=NOW, emit=False)
    assert silent.snapshot == Snapshot(3, None) and silent.events == []


def test_changed_fields_counts_missing_vs_null() -> None:
    assert changed_fields({"a": 1}, {"a": 1, "b": None}) == ["b"]
    assert changed_fields({"a": 1, "updated_at": "x"}, {"a": 1}) == []


T0 = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("previous", "values", "expected"),
    [
        (None, [], None),
        (
            None,
            ["2026-11-28T05:00:00.000Z", "2026-11-28T05:30:00.000Z"],
            T0 - timedelta(minutes=30),
        ),
        (T0 - timedelta(minutes=10), ["2026-11-28T05:00:00.000Z"], T0 - timedelta(minutes=10)),
        (None, [None, "not a date", "2026-11-28T05:59:00.000Z"], T0 - timedelta(minutes=1)),
        (None, ["0001-01-01T00:00:00Z"], None),  # a zero value is no time at all
        # a little ahead of the upstream's clock (a clock a few seconds fast): believed, but
        # the watermark goes no further than the answer's Date, or the overlap falls short
        (None, ["2026-11-28T06:00:59.000Z"], T0),
    ],
)
def test_watermark(
    previous: datetime | None, values: list[object], expected: datetime | None
) -> None:
    stamps = Watermark(previous)
    stamps.see(values, T0)
    assert (stamps.newest, stamps.implausible) == (expected, 0)


def test_a_stamp_far_ahead_of_the_answer_moves_no_watermark_onto_another_clock() -> None:
    """A provider 5 minutes behind StackOne, and one record stamped 9999-12-31: the watermark
    stays on the provider's clock (its newest believable stamp), so the next read's bound
    is not past the provider's later changes; the stamp is counted."""
    lagging = T0 - timedelta(minutes=5)
    stamps = Watermark(lagging - timedelta(minutes=1))
    stamps.see(["9999-12-31T00:00:00.000Z", lagging.isoformat(), "2026-11-28T06:01:01Z"], T0)
    assert stamps.newest == lagging
    assert stamps.implausible == 2
    assert stamps.newest_implausible == datetime(9999, 12, 31, tzinfo=UTC)


def test_a_quiet_feeds_window_moves_on_with_time_on_the_providers_clock() -> None:
    """A bulk stamped S, on a provider 5 minutes behind StackOne: the read that sees it
    anchors S a second (a `Date`'s resolution) after its last answer; later reads that see
    nothing newer move the watermark on by the time elapsed on StackOne's clock, so it
    passes S + overlap after about `overlap`, and stays on the provider's clock."""
    second = timedelta(seconds=1)
    bulk = T0 - timedelta(minutes=5)  # stamped on the provider's clock
    window = FeedWindow(bulk - timedelta(hours=2), T0 - timedelta(hours=1))
    # the read that sees the bulk: its pages dated T0 .. T0 + 3 s
    seen = window.after_read(bulk, T0, T0 + 3 * second)
    assert seen == FeedWindow(bulk, T0 + 4 * second)
    # a quiet read 10 s later: 6 s past the anchor, its first answer a lower bound
    quiet = seen.after_read(bulk, T0 + 10 * second, T0 + 11 * second)
    assert quiet == FeedWindow(bulk + 6 * second, T0 + 10 * second)
    assert updated_after(quiet.watermark, 5) == bulk + second  # past the bulk: one page
    # reads in a row lose nothing to the second's resolution: the same line, moved along
    later = quiet.after_read(quiet.watermark, T0 + 20 * second, T0 + 20 * second)
    assert later == FeedWindow(bulk + 16 * second, T0 + 20 * second)
    # a change stamped within the moved window: its stamp, anchored at its read
    change = bulk + 18 * second
    assert later.after_read(change, T0 + 21 * second, T0 + 21 * second) == FeedWindow(
        change, T0 + 22 * second
    )


@pytest.mark.parametrize(
    ("window", "newest", "first", "last", "expected"),
    [
        # no anchor yet (state from before anchors): stamps only, anchored now
        (FeedWindow(T0, None), T0, T0, T0, FeedWindow(T0, T0 + timedelta(seconds=1))),
        # answers without a `Date`: the watermark moves with stamps only, the anchor goes
        (FeedWindow(T0, T0), T0, None, None, FeedWindow(T0, None)),
        # a `Date` behind the anchor (another StackOne server): nothing moves back
        (
            FeedWindow(T0, T0 + timedelta(seconds=9)),
            T0,
            T0 + timedelta(seconds=5),
            T0 + timedelta(seconds=5),
            FeedWindow(T0, T0 + timedelta(seconds=9)),
        ),
        # never past the first answer's `Date`
        (
            FeedWindow(T0, T0 - timedelta(minutes=1)),
            T0,
            T0 + timedelta(seconds=30),
            T0 + timedelta(seconds=30),
            FeedWindow(T0 + timedelta(seconds=30), T0 + timedelta(seconds=30)),
        ),
        # the first read of an account: nothing to move
        (FeedWindow(None), None, T0, T0, FeedWindow(None)),
    ],
)
def test_feed_window_edges(
    window: FeedWindow,
    newest: datetime | None,
    first: datetime | None,
    last: datetime | None,
    expected: FeedWindow,
) -> None:
    assert window.after_read(newest, first, last) == expected


def test_updated_after_reads_the_overlap_again() -> None:
    assert updated_after(None, 60) is None
    assert updated_after(T0, 60) == T0 - timedelta(seconds=60)


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


@pytest.mark.parametrize(
    ("previous", "current", "emit", "expected"),
    [
        # first seen with a future due date: watched, also during the baseline
        (
            None,
            record(due_date="2026-12-01T00:00:00.000Z"),
            False,
            (None, ms("2026-12-01T00:00:00.000Z")),
        ),
        # already past: reported at once after the baseline, not during it
        (
            None,
            record(due_date="2026-11-01T00:00:00.000Z"),
            True,
            (None, ms("2026-11-01T00:00:00.000Z")),
        ),
        (None, record(due_date="2026-11-01T00:00:00.000Z"), False, (None, None)),
        # same due date, other change: left as it is (never reported twice)
        (record(), record(progress=5), True, (None, None)),
        # completed: stop watching; due date moved: watch the new one
        (
            record(),
            record(status=status("completed")),
            True,
            (ms("2026-12-31T00:00:00.000Z"), None),
        ),
        (
            record(),
            record(due_date="2027-01-31T00:00:00.000Z"),
            True,
            (ms("2026-12-31T00:00:00.000Z"), ms("2027-01-31T00:00:00.000Z")),
        ),
        (None, record(due_date=None), True, (None, None)),
    ],
)
def test_overdue_watch(
    previous: dict[str, Any] | None, current: dict[str, Any], emit: bool, expected: tuple[Any, Any]
) -> None:
    before = Snapshot(1, previous) if previous else None
    assert overdue_watch(before, Snapshot(2, current), NOW, emit) == expected


def test_overdue_event_once_per_due_date() -> None:
    snap = Snapshot(3, record(due_date="2026-11-01T00:00:00.000Z"))
    event = detect_overdue("a", "u", "1", snap, ms("2026-11-01T00:00:00.000Z"), now=NOW)
    assert event is not None and event["type"] == ev.OVERDUE
    assert event["data"]["sequence"] == 3 and event["data"]["changed_fields"] == []
    later = detect_overdue(
        "a", "u", "1", Snapshot(4, snap.record), ms("2026-11-01T00:00:00.000Z"), now=NOW
    )
    assert later is not None and later["id"] == event["id"]  # same due date, same id
    done = Snapshot(4, record(due_date="2026-11-01T00:00:00.000Z", status=status("completed")))
    assert detect_overdue("a", "u", "1", done, ms("2026-11-01T00:00:00.000Z"), now=NOW) is None
    moved = Snapshot(4, record(due_date="2026-11-02T00:00:00.000Z"))
    assert detect_overdue("a", "u", "1", moved, ms("2026-11-01T00:00:00.000Z"), now=NOW) is None
