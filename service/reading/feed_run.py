"""One account feed read in progress (of one tracked resource): the users it met, what it
found in their records, and what its next commit writes. No upstream requests here; the
snapshots come from Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import structlog

from service.changes.detect import (
    Change,
    FeedWindow,
    LatestVersions,
    Snapshot,
    Watermark,
    changed_since_found,
    detect,
    version_time,
)
from service.changes.outbox import Outbox
from service.config import EndpointSettings
from service.metrics import Metrics
from service.resources import Resource
from service.store.feeds import FeedStore
from service.store.leases import Lease
from service.store.polls import StoredUser
from service.store.read_state import ReadState
from service.store.scripts import UserWrite
from service.upstream.model import Page

log = structlog.get_logger("feed")

KEEP_LOADED = 2000  # users whose snapshots stay in memory during a long read


@dataclass(slots=True)
class FeedResult:
    full: bool = False
    pages: int = 0
    records: int = 0
    changes: int = 0
    events: int = 0
    found: int = 0  # changes that sent events (committed): what the adaptive cadence counts
    skipped: int = 0  # records that cannot be tracked (no id, no user_id, invalid)
    untracked: int = 0  # records of users not tracked
    duplicates: int = 0  # versions of a record read twice in this run (one kept)
    baselined: int = 0  # users baselined by a complete read of their own


@dataclass(slots=True)
class FeedUser:
    """One user met by a read. `stored` is dropped after a commit when many are loaded
    (its snapshots are in Redis) and loaded again if the user comes back."""

    stored: StoredUser | None
    emit: bool
    was_baselined: bool
    found_ms: int | None  # when a listing found it: changes stamped later are sent
    live_before: frozenset[str]  # records present before this read (removal candidates)
    # records read in this run, with the `updated_at` of the version detected
    seen: dict[str, datetime] = field(default_factory=dict)
    dirty: bool = False
    complete: bool = False  # read completely by this run: baselined once it commits

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        assert self.stored is not None, "loaded before use"
        return self.stored.snapshots


class FeedRun:
    def __init__(
        self,
        lease: Lease,
        store: FeedStore,
        endpoints: Iterable[EndpointSettings],
        *,
        resource: Resource,
        full: bool,
        tracked: set[str],
        users_version: str | None,
        now: datetime,
        window: FeedWindow,
        emit_on_first_sync: bool,
        result: FeedResult | None = None,
        state: ReadState | None = None,
    ) -> None:
        """`result`: the counts of the whole feed read (its resources' together)."""
        self.lease = lease
        self.resource = resource
        self.state = state or ReadState()  # the feed's, before this read
        self.store = store
        self.endpoints = list(endpoints)
        self.full = full
        self.tracked = tracked
        self.users_version = users_version  # the tracked users' version `tracked` is of
        self.now = now
        self.now_ms = int(now.timestamp() * 1000)
        self.emit_on_first_sync = emit_on_first_sync
        self.result = FeedResult(full=full) if result is None else result
        self.skipped = 0  # records of this resource's read that cannot be tracked
        self.duplicates = 0  # versions read twice in it (one kept)
        self.outbox = Outbox()
        self.users: dict[str, FeedUser] = {}
        self.ignored: set[str] = set()  # tracked, but not baselined yet
        self.latest: LatestVersions[tuple[str, str]] = LatestVersions()  # read, not detected
        self.window = window  # as the read started
        self.stamps = Watermark(window.watermark)
        # the `Date` of the first and of the last answer (None: it had none)
        self.first_date: datetime | None = None
        self.last_date: datetime | None = None
        self.loaded = 0  # users whose snapshots are in memory

    @property
    def account_id(self) -> str:
        return self.lease.account_id

    def answered(self, page: Page) -> None:
        """One more page of the feed: counted, its stamps and its `Date` seen."""
        self.result.pages += 1
        self.result.records += len(page.records)
        self.stamps.see((r.get("updated_at") for r in page.records), page.served_at or self.now)
        if self.result.pages == 1:
            self.first_date = page.served_at
        self.last_date = page.served_at

    def final_state(self) -> ReadState:
        """The feed's state once the read has committed everything: its window moved on
        (detect.FeedWindow), when it ran."""
        window = self.window.after_read(self.stamps.newest, self.first_date, self.last_date)
        state = ReadState.after_read(window.watermark, self.now_ms, full=self.full)
        anchor = window.anchor
        return replace(state, anchor_ms=0 if anchor is None else int(anchor.timestamp() * 1000))

    def meet(self, user_id: str, stored: StoredUser) -> FeedUser:
        baselined = bool(stored.state.baselined)
        user = FeedUser(
            stored,
            emit=baselined or self.emit_on_first_sync,
            was_baselined=baselined,
            found_ms=stored.state.found_ms,
            live_before=frozenset(a for a, s in stored.snapshots.items() if s.record is not None),
        )
        self.users[user_id] = user
        self.loaded += 1
        return user

    async def load(self, user_ids: set[str]) -> None:
        """Load the tracked users among these not in memory yet. During an incremental read
        a user not baselined is ignored: its own complete read will baseline it."""
        wanted = {
            u
            for u in user_ids & self.tracked
            if u not in self.ignored and (u not in self.users or self.users[u].stored is None)
        }
        if not wanted:
            return
        loaded = await self.store.load_users(self.account_id, wanted, self.resource)
        for user_id, stored in loaded.items():
            known = self.users.get(user_id)
            if known is not None:
                known.stored = stored
                self.loaded += 1
            elif stored.state.baselined or self.full:
                self.meet(user_id, stored)
            else:
                self.ignored.add(user_id)

    async def detect_latest(self) -> None:
        """Detect the versions held (one per user and record), their users loaded."""
        held = self.latest.take()
        await self.load({user_id for user_id, _ in held})
        for (user_id, _), record in held.items():
            if user_id in self.users:
                self.detect(user_id, record)

    def detect(self, user_id: str, record: dict[str, Any]) -> None:
        user = self.users[user_id]
        record_id = str(record["id"])
        version = version_time(record)
        held = user.seen.get(record_id)
        # one read sees one version of a record: an older one listed again (a provider
        # listing an id twice) would be detected as a change back, and then forward again
        if held is not None and version < held:
            self.result.duplicates += 1
            self.duplicates += 1
            return
        user.seen[record_id] = version
        previous = user.snapshots.get(record_id)
        emit = user.emit or changed_since_found(record, user.found_ms)
        change = detect(
            self.account_id,
            user_id,
            record_id,
            previous,
            record,
            now=self.now,
            emit=emit,
            resource=self.resource,
        )
        if change is not None:
            self.add(user_id, change, previous, emit=emit)

    def add(
        self, user_id: str, change: Change, previous: Snapshot | None, *, emit: bool | None = None
    ) -> None:
        user = self.users[user_id]
        user.snapshots[change.record_id] = change.snapshot
        user.dirty = True
        self.outbox.add(
            self.account_id,
            user_id,
            change,
            previous,
            now=self.now,
            due_ms=self.now_ms,
            emit=user.emit if emit is None else emit,
            endpoints=self.endpoints,
        )

    def retrack(self, tracked: set[str], users_version: str | None) -> None:
        """Users were added or removed during the read: those no longer tracked are not
        written (their events, read while they were, still go out)."""
        self.tracked, self.users_version = tracked, users_version
        for user_id in [u for u in self.users if u not in tracked]:
            del self.users[user_id]

    def writes(self, final: bool) -> list[UserWrite]:
        """Each user's part of the next commit. Users are baselined by the final commit
        only: a read cut short must baseline them again."""
        out = []
        for user_id, user in self.users.items():
            baseline = final and user.complete and not user.was_baselined
            if user.dirty or baseline:
                snapshots = user.snapshots if user.dirty else None
                out.append(
                    UserWrite(user_id, snapshots, ReadState(baselined=True) if baseline else None)
                )
        return out

    def committed(self, final: bool) -> Outbox:
        """After a commit: a fresh outbox; when many users are loaded, their snapshots leave
        memory (they are in Redis now). Returns the outbox committed."""
        done, self.outbox = self.outbox, Outbox()
        evict = not final and self.loaded >= KEEP_LOADED
        for user in self.users.values():
            user.dirty = False
            if evict:
                user.stored = None
        if evict:
            self.loaded = 0
        return done


def count_skipped(metrics: Metrics, run: FeedRun, skipped: dict[str, int]) -> None:
    """Records that cannot be tracked: counted, logged, skipped (the read goes on)."""
    for reason, count in skipped.items():
        run.result.skipped += count
        run.skipped += count
        metrics.records_skipped.labels(reason).inc(count)
        log.warning(
            "records_skipped",
            account_id=run.account_id,
            resource=run.resource.name,
            reason=reason,
            count=count,
        )
