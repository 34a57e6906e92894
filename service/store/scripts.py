"""Every Lua script behind an atomic state change, each with the one wrapper that packs its
KEYS and ARGV and reads its reply.

The scripts are files in `lua/`, each opening with the keys and arguments it takes; a line
`--!include name.lua` pulls in a library part (the fence, leases, the enqueue, the GCRA) as
local functions. A script's text is read once per process and registered once per Redis
client, and runs by EVALSHA.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import cache
from importlib.resources import files
from typing import Any, ClassVar, NamedTuple

from opentelemetry.trace import Span, SpanKind
from redis.asyncio import Redis
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError

from service import jsonfmt
from service.changes.detect import Snapshot
from service.changes.outbox import EventHead, Outbox, OverdueWatch, RoutedEvents
from service.resources import ASSIGNMENTS, COMPLETIONS, Resource
from service.store import keys, log_body
from service.store.claims import ClaimedEvent, ClaimedHead, DeliveryMeta
from service.store.log_policy import LogPolicy
from service.store.outcome import LEASE_SECONDS, EndLease, KeepLease, LeaseOutcome
from service.store.read_state import ReadState
from service.store.snapshots import encode_snapshots
from service.tracing import span, traceparent

# a lease that fences a write (Lease.held): its schedule zset, its member, the token held
Held = tuple[str, str, int]

_RAW: dict[str, Any] = {NEVER_DECODE: True}  # a command's reply left undecoded
_INCLUDE = re.compile(r"^--!include (\w+)\.lua$", re.MULTILINE)


@cache
def lua_source(name: str) -> str:
    """`lua/<name>.lua` with its includes in place."""
    text = files("service.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: lua_source(m.group(1)), text)


class _Script:
    source: ClassVar[str]  # the file name in lua/, without .lua

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._run = redis.register_script(lua_source(self.source))

    async def _run_raw(self, *, keys: list[Any], args: list[Any]) -> Any:
        """The script's reply with its strings as the bytes Redis holds (the store's clients
        decode every other reply as UTF-8): the EVALSHA redis-py's Script would send, with
        the per-command NEVER_DECODE it cannot pass (retried as any command is)."""
        script = self._run

        async def evalsha() -> Any:
            return await self._redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", script.sha, len(keys), *keys, *args, **_RAW
            )

        try:
            return await evalsha()
        except NoScriptError:  # a server that lost its scripts (restarted, failed over)
            script.sha = await self._redis.script_load(script.script)
            return await evalsha()


class _Enqueues(_Script):
    """A commit that queues events, and so logs them as `log` says."""

    def __init__(self, redis: Redis, log: LogPolicy) -> None:
        super().__init__(redis)
        self.log = log


def _head(body: bytes | str) -> EventHead:
    """Of a body queued without its head (tools, tests): read from the JSON."""
    try:
        event = jsonfmt.loads(body)
    except ValueError:
        event = None
    return EventHead.of(event if isinstance(event, dict) else {})


_SEP = "\x1f"  # between the parts of an event's head in the log (lua/log.lua, field h)


def log_head(head: EventHead, at_ms: int) -> str:
    """An event's head as the delivery log keeps it: type, when logged, timestamp, account,
    user and assignment, joined by _SEP (None: empty). An upstream id holding _SEP itself
    (none does) has it replaced, so the parts stay where the readers look for them."""
    kind, timestamp, account, user, assignment = head
    text = (
        f"{kind}\x1f{at_ms}\x1f{timestamp}\x1f{account or ''}\x1f{user or ''}\x1f{assignment or ''}"
    )
    if text.count(_SEP) != 5:  # one f-string, checked at C speed: a commit makes thousands
        parts = (kind, str(at_ms), timestamp, account or "", user or "", assignment or "")
        text = _SEP.join(part.replace(_SEP, "\ufffd") for part in parts)
    return text


def _log_part(event_id: str, head: EventHead, body: bytes | str, shared: dict[bytes, str]) -> str:
    """How the log keeps an event's body (enqueue.lua): '' whole; else the key of its shared
    `data`, and the first time this call names that key, _SEP and the data as stored (the
    events of a change share their `data`: it is packed once per commit, under the key of
    the first event that carries it)."""
    raw = body if isinstance(body, bytes) else body.encode()
    data = log_body.split(event_id, head.type, head.timestamp, raw)
    if data is None:
        return ""
    if (key := shared.get(data)) is not None:
        return key
    key = shared[data] = keys.log_data(event_id)
    return f"{key}{_SEP}{log_body.pack(data)}"


def _pack_events(
    events: RoutedEvents, log: LogPolicy, script_keys: list[Any], args: list[Any]
) -> int:
    """KEYS and ARGV of enqueue.lua (the last part of a commit's keys and arguments): each
    event once, in four arguments (a commit's thousands of arguments cost the client more
    to encode than anything else in it): its id and head, its body, the endpoints it is
    queued for with their due times, and how the log keeps its body (_log_part)."""
    endpoint_ids = sorted(events)
    # event id → [its id and head, its body, its routes ("number:due", ...), its log part]
    by_event: dict[str, list[Any]] = {}
    shared: dict[bytes, str] = {}  # a `data` → its key, once named in this call
    for number, endpoint_id in enumerate(endpoint_ids, 1):
        for event_id, body, due, head in events[endpoint_id]:
            if (entry := by_event.get(event_id)) is None:
                head = head or _head(body)
                head_text = log_head(head, due)
                kept = _log_part(event_id, head, body, shared)
                by_event[event_id] = [f"{event_id}{_SEP}{head_text}", body, f"{number}:{due}", kept]
            else:
                entry[2] += f" {number}:{due}"
    script_keys.append(keys.LOG_EVENTS)
    for endpoint_id in endpoint_ids:
        ep = keys.EndpointKeys(endpoint_id)
        script_keys += [ep.due, ep.body, ep.log, ep.meta]
    args += [log.retention_ms, log.max_per_endpoint, log.ttl_ms]
    args += [keys.LOG_EVENT_PREFIX, keys.LOG_ENDPOINT_PREFIX]
    # the commit's span (current here: see _committing), the parent of the events' deliveries
    args += [traceparent() if by_event else "", len(endpoint_ids), *endpoint_ids]
    args.append(len(by_event))
    for event_args in by_event.values():
        args += event_args
    return len(by_event)


def _committing(kind: str, **ids: str) -> AbstractContextManager[Span]:
    """A commit's span (a child of its read's), current while its events are packed: their
    deliveries' spans are its children."""
    attributes: dict[str, str] = {"db.system.name": "redis", "lms_webhooks.commit": kind}
    attributes.update((f"lms_webhooks.{name}", value) for name, value in ids.items() if value)
    return span(f"commit {kind}", attributes, kind=SpanKind.CLIENT)


def _committed(current: Span, committed: bool, events: int | None = None) -> None:
    if events is not None:
        current.set_attribute("lms_webhooks.events", events)
    current.set_attribute("lms_webhooks.outcome", "committed" if committed else "lease_lost")


# lease.lua's LEASED: a member scored at or above it is being worked on, and its score less
# LEASED is when its lease runs out (epoch ms on Redis' clock); below it, a score is a due
# time (epoch ms on the clock of the process that wrote it)
LEASED = 2**52


def lease_ms(seconds: float) -> int:
    """A lease's length as the scripts take it: at least 1 ms, so that each claim's token
    differs from that of the claim it took over."""
    return max(1, int(seconds * 1000))


def hold(seconds: float) -> int:
    """A new score that keeps a lease `seconds` longer, on Redis' clock (lease.lua's move
    reads -n so); a score of 0 or more is a due time, which ends the lease."""
    return -lease_ms(seconds)


def due_score(due: float) -> int:
    """A due time (epoch seconds on the writer's clock) as a schedule's score."""
    return int(due * 1000)


def outcome_score(outcome: LeaseOutcome) -> int:
    """The one place a read's outcome becomes the score its script writes: a due time ends
    the lease, a hold keeps it."""
    if isinstance(outcome, KeepLease):
        return hold(LEASE_SECONDS)
    return due_score(outcome.due)


def due_or_expiry_ms(score: float) -> int:
    """A schedule's or queue's score as operators see it: the due time, or, while the member
    is worked on, when its lease runs out (epoch ms on Redis' clock)."""
    return int(score) - LEASED if score >= LEASED else int(score)


USERS_CHANGED = -2  # commit_feed.lua: users added or removed since the read took its users


def _moved(reply: Any) -> int | None:
    """A moving script's reply: the score it wrote, None when the lease was lost (-1)."""
    score = int(reply)
    return None if score < 0 else score


def _state_pairs(state: ReadState | None, prefix: str = "") -> list[str]:
    return [x for pair in (state.encode(prefix) if state else {}).items() for x in pair]


class ClaimDue(_Script):
    source = "claim_due"

    async def __call__(
        self, zset: str, now_ms: int, lease_ms: int, limit: int, first: Sequence[str] = ()
    ) -> tuple[int, list[tuple[str, int]]]:
        """Up to `limit` members due by `now_ms` (or whose lease ran out), each with when it
        was due (ms), leased for `lease_ms` on Redis' clock; with the leases' token. Those of
        `first` that are due come before the others."""
        token, *flat = await self._run(keys=[zset], args=[now_ms, lease_ms, limit, *first])
        return int(token), [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]


class MoveLease(_Script):
    source = "move_lease"

    async def __call__(
        self,
        schedule: tuple[str, str],
        member: str,
        token: int,
        outcome: EndLease,
        state: ReadState | None = None,
    ) -> bool:
        """`schedule`: (the zset, the member's state hash). False when the lease was lost."""
        args: list[Any] = [member, token, outcome_score(outcome), *_state_pairs(state)]
        return _moved(await self._run(keys=list(schedule), args=args)) is not None


class ExtendLeases(_Script):
    source = "extend_leases"

    async def __call__(
        self, zset: str, hold_ms: int, held: list[tuple[str, int]]
    ) -> list[int | None]:
        """Each (member, token held) lease runs until `hold_ms` from now on Redis' clock
        (never shortened). Returns each lease's token now, None where it was lost."""
        if not held:
            return []
        args: list[Any] = [hold_ms]
        for member, token in held:
            args += [member, token]
        return [_moved(token) for token in await self._run(keys=[zset], args=args)]


class DueNow(_Script):
    source = "due_now"

    async def __call__(self, schedule: tuple[str, str], member: str) -> bool:
        """`schedule`: (the zset, the member's state hash). False when not scheduled."""
        return bool(await self._run(keys=list(schedule), args=[member]))


def _state_args(state: ReadState | None, prefix: str = "") -> list[Any]:
    """A ReadState as commit_parts.lua's hset_pairs reads it (a resource's own fields under
    `prefix`)."""
    pairs = _state_pairs(state, prefix)
    return [len(pairs) // 2, *pairs]


def _watch_args(watch: list[OverdueWatch], unwatch: list[OverdueWatch]) -> list[Any]:
    """Overdue watches as commit_parts.lua's watch reads them."""
    args: list[Any] = [len(watch)]
    for due in watch:
        args += [keys.overdue_member(*due), due.due_ms]
    return [*args, len(unwatch), *(keys.overdue_member(*due) for due in unwatch)]


class CommitPoll(_Enqueues):
    """PollStore.commit."""

    source = "commit_poll"

    async def __call__(
        self,
        account_id: str,
        user_id: str,
        outbox: Outbox,
        *,
        token: int | None,
        outcome: LeaseOutcome | None = None,
        state: ReadState | None = None,
        snapshots: dict[str, Snapshot] | None = None,
        weight: float | None = None,
        resource: Resource = ASSIGNMENTS,
        answered: bool = False,
    ) -> int | None:
        """Snapshots, user state, outgoing events and the lease's outcome in one atomic step.

        `snapshots`: every snapshot of the user's `resource` (they are stored as one value),
        or None to leave them as they are; `state` as that resource's read sees it. `token`
        None: unfenced (tools and tests, not polls).

        `outcome`: EndLease (the user is due again then), KeepLease (a flush), or None (the
        schedule is left as it is). Returns the lease's token (a kept lease's new one; any
        int once it ended, or for None). `answered`: the poll's last commit (it succeeded),
        which ends its account's run of failing reads and its back-off, whichever process
        wrote them (even while this read was in flight).

        None when `token` no longer holds the user's lease: another process took the user
        over, so nothing was written and this poll's results are dropped.
        """
        script_keys: list[Any] = [
            keys.POLL_DUE,
            keys.snapshots(account_id, user_id, resource),
            keys.user_state(account_id, user_id),
            keys.OVERDUE,
            keys.legacy_snapshots(account_id, user_id, resource),
            keys.USER_WEIGHTS,
            keys.FAILING_ACCOUNTS,
            keys.BLOCKED_ACCOUNTS,
        ]
        args: list[Any] = [
            keys.user_member(account_id, user_id),
            "" if token is None else token,
            "" if outcome is None else outcome_score(outcome),
            "" if snapshots is None else encode_snapshots(snapshots),
            "" if weight is None else weight,
            account_id if answered else "",
            *_state_args(state, resource.state_prefix),
            *_watch_args(outbox.watch, outbox.unwatch),
        ]
        ids = {"account_id": account_id, "user_id": user_id, "resource": resource.name}
        with _committing("poll", **ids) as current:
            queued = _pack_events(outbox.events, self.log, script_keys, args)
            moved = _moved(await self._run(keys=script_keys, args=args))
            _committed(current, moved is not None, queued)
        return moved


class UserWrite(NamedTuple):
    """One user's part of a feed commit."""

    user_id: str
    snapshots: dict[str, Snapshot] | None  # every snapshot of the user; None: unchanged
    state: ReadState | None


class TrackedUsersChanged(Exception):
    """A feed commit found users added or removed since its read took its users: nothing was
    written."""


class CommitFeed(_Enqueues):
    """FeedStore.commit."""

    source = "commit_feed"

    async def __call__(
        self,
        account_id: str,
        outbox: Outbox,
        *,
        token: int,
        outcome: LeaseOutcome,
        state: ReadState | None,
        users_version: str | None,
        users: list[UserWrite],
        resource: Resource = ASSIGNMENTS,
        answered: bool = False,
    ) -> int | None:
        """Every user's snapshots and state (of `resource`), the events and overdue watches,
        the feed's state and its lease's `outcome` (as PollStore.commit takes it) in one
        atomic step; returns the lease's token, None when `token` no longer holds the
        account's feed lease (nothing written). `users_version`: the tracked users' version
        (FeedStore.users_version) `users` were taken at: raises TrackedUsersChanged (nothing
        written) when users were added or removed since and `users` is not empty.
        `answered` as PollStore.commit takes it."""
        script_keys: list[Any] = [
            keys.FEED_DUE,
            keys.feed_state(account_id),
            keys.OVERDUE,
            keys.USERS_VERSION,
            keys.FAILING_ACCOUNTS,
            keys.BLOCKED_ACCOUNTS,
        ]
        args: list[Any] = [
            keys.account_member(account_id),
            token,
            outcome_score(outcome),
            users_version or "",
            account_id if answered else "",
            *_state_args(state, resource.state_prefix),
            len(users),
        ]
        for user in users:
            script_keys += [
                keys.snapshots(account_id, user.user_id, resource),
                keys.user_state(account_id, user.user_id),
                keys.legacy_snapshots(account_id, user.user_id, resource),
            ]
            args += ["" if user.snapshots is None else encode_snapshots(user.snapshots)]
            args += _state_args(user.state, resource.state_prefix)
        args += _watch_args(outbox.watch, outbox.unwatch)
        with _committing("feed", account_id=account_id, resource=resource.name) as current:
            queued = _pack_events(outbox.events, self.log, script_keys, args)
            reply = await self._run(keys=script_keys, args=args)
            if int(reply) == USERS_CHANGED:
                raise TrackedUsersChanged(account_id)
            _committed(current, _moved(reply) is not None, queued)
        return _moved(reply)


class CommitOverdue(_Enqueues):
    """PollStore.commit_overdue."""

    source = "commit_overdue"

    async def __call__(self, claims: list[tuple[str, int, RoutedEvents]]) -> list[bool]:
        """For each claimed due date (overdue member as claimed, its claim's token, its
        events): queue its events (maybe none) and unwatch it, fenced by its own claim; all
        in one step. Returns, per claim, whether it still held (and so was committed)."""
        script_keys: list[Any] = [keys.OVERDUE]
        # each claim's events are queued only while its claim holds: the script skips the
        # events of a claim it finds lost (their ids listed with the claim)
        merged: RoutedEvents = {}
        args: list[Any] = [len(claims)]
        for member, token, events in claims:
            ids = sorted({queued[0] for routed in events.values() for queued in routed})
            args += [member, token, len(ids), *ids]
            for endpoint_id, routed in events.items():
                merged.setdefault(endpoint_id, []).extend(routed)
        with _committing("overdue") as current:
            queued = _pack_events(merged, self.log, script_keys, args)
            done = [bool(flag) for flag in await self._run(keys=script_keys, args=args)]
            current.set_attribute("lms_webhooks.events", queued)
        return done


class LoadedUser(NamedTuple):
    permit_wait: float  # seconds until the permit asked for; 0: granted
    state: dict[str, str]
    snapshots: str | None
    legacy: dict[str, str]  # 0.1's snapshot hash, when `snapshots` is missing


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class LoadUser(_Script):
    source = "load_user"

    async def __call__(
        self,
        account_id: str,
        user_id: str,
        rate_keys: list[str],
        rate_args: list[float],
        resource: Resource = ASSIGNMENTS,
    ) -> LoadedUser:
        wait_ms, state, snaps, legacy = await self._run(
            keys=[
                keys.user_state(account_id, user_id),
                keys.snapshots(account_id, user_id, resource),
                *rate_keys,
                keys.legacy_snapshots(account_id, user_id, resource),
            ],
            args=rate_args,
        )
        return LoadedUser(float(wait_ms) / 1000.0, _pairs(state), snaps, _pairs(legacy))


class GcraAcquire(_Script):
    source = "gcra_acquire"

    async def __call__(self, rate_keys: list[str], rate_args: list[float]) -> float:
        """Seconds to wait; 0: granted."""
        return float(await self._run(keys=rate_keys, args=rate_args)) / 1000.0


class Pause(_Script):
    source = "pause"

    async def __call__(self, pause_key: str, seconds: float) -> None:
        await self._run(keys=[pause_key], args=[max(1, int(seconds * 1000))])


class ClaimEvents(_Script):
    source = "claim_events"

    async def __call__(
        self, endpoint_id: str, now_ms: int, lease_ms: int, limit: int, held_until: float
    ) -> list[ClaimedEvent]:
        """Up to `limit` events due by `now_ms` (or whose claim ran out), claimed for
        `lease_ms` on Redis' clock; `held_until`: when the claimer takes them to run out, on
        its own clock. Each body comes as the bytes queued, to be signed and sent as is."""
        ep = keys.EndpointKeys(endpoint_id)
        token, *flat = await self._run_raw(
            keys=[ep.due, ep.body, ep.meta], args=[now_ms, lease_ms, limit]
        )
        claimed = []
        for i in range(0, len(flat), 3):
            event_id, body = flat[i].decode(), log_body.queued_body(flat[i + 1])
            meta = flat[i + 2]
            claimed.append(
                ClaimedEvent(
                    event_id,
                    body,
                    ClaimedHead.of(event_id, body),
                    DeliveryMeta.decode(meta.decode() if meta else None),
                    int(token),
                    held_until,
                )
            )
        return claimed


class AckEvents(_Script):
    source = "ack_events"

    async def __call__(self, endpoint_id: str, events: list[ClaimedEvent]) -> list[bool]:
        """Each event's `record` is its attempt's, for the delivery log."""
        ep = keys.EndpointKeys(endpoint_id)
        args: list[Any] = [endpoint_id, keys.LOG_EVENT_PREFIX]
        for event in events:
            args += [event.event_id, event.token, event.record]
        done = await self._run(keys=[ep.due, ep.body, ep.meta, ep.attempts], args=args)
        return [bool(flag) for flag in done]


class MoveEvent(_Script):
    source = "move_event"

    async def __call__(
        self,
        endpoint_id: str,
        event: ClaimedEvent,
        score: int,
        meta: DeliveryMeta | None,
        record: str = "",
    ) -> int | None:
        """`score`: the next attempt's due time or hold(…); `record`: the attempt that led
        to the move, for the delivery log ("": none). Returns the score written (a held
        claim's new token), None when the claim was lost."""
        ep = keys.EndpointKeys(endpoint_id)
        moved = await self._run(
            keys=[ep.due, ep.meta, ep.attempts],
            args=[
                event.event_id,
                event.token,
                score,
                "" if meta is None else meta.encode(),
                endpoint_id,
                keys.LOG_EVENT_PREFIX,
                record,
            ],
        )
        return _moved(moved)


class DeadLetterEvent(_Script):
    source = "dead_letter_event"

    async def __call__(
        self, endpoint_id: str, event: ClaimedEvent, now_ms: int, record: str = ""
    ) -> bool:
        ep = keys.EndpointKeys(endpoint_id)
        done = await self._run(
            keys=[ep.due, ep.dead, ep.meta, ep.attempts],
            args=[
                event.event_id,
                event.token,
                now_ms,
                event.meta.encode(),
                endpoint_id,
                keys.LOG_EVENT_PREFIX,
                record,
            ],
        )
        return bool(done)


class ReplayDead(_Script):
    source = "replay_dead"

    async def __call__(self, endpoint_id: str, now_ms: int, event_ids: list[str] | None) -> int:
        ep = keys.EndpointKeys(endpoint_id)
        queued = await self._run(
            keys=[ep.due, ep.dead, ep.meta],
            args=[now_ms, keys.LOG_EVENT_PREFIX, endpoint_id, *(event_ids or [])],
        )
        return int(queued)


class Redeliver(_Script):
    source = "redeliver"

    async def __call__(
        self,
        endpoint_id: str,
        *,
        since_ms: int,
        until_ms: int,
        outcome: str,
        now_ms: int,
        never: str,
    ) -> int:
        """`outcome`: delivered, dead or any; `never`: a type not sent again."""
        ep = keys.EndpointKeys(endpoint_id)
        queued = await self._run(
            keys=[ep.log, ep.due, ep.body, ep.meta, ep.dead],
            args=[keys.LOG_EVENT_PREFIX, endpoint_id, since_ms, until_ms, outcome, now_ms, never],
        )
        return int(queued)


class LogSent(_Script):
    source = "log_sent"

    async def __call__(
        self,
        log: LogPolicy,
        endpoint_id: str,
        event_id: str,
        head: EventHead,
        body: bytes,
        *,
        at_ms: int,
        outcome: str,
        record: str,
    ) -> None:
        ep = keys.EndpointKeys(endpoint_id)
        await self._run(
            keys=[keys.LOG_EVENTS, ep.log, ep.attempts],
            args=[
                log.retention_ms,
                log.max_per_endpoint,
                log.ttl_ms,
                keys.LOG_EVENT_PREFIX,
                keys.LOG_ENDPOINT_PREFIX,
                endpoint_id,
                event_id,
                log_head(head, at_ms),
                body,
                at_ms,
                outcome,
                record,
            ],
        )


class CommitListing(_Script):
    """FeedStore.commit_listing."""

    source = "commit_listing"

    async def __call__(
        self,
        account_id: str,
        *,
        token: int,
        outcome: EndLease,
        state: ReadState,
        add: list[str],
        found_ms: int,
        drop: list[str],
    ) -> bool:
        """Users added to and dropped from a listing, with the listing's state, in one
        atomic step that ends its lease; False when the lease was lost (nothing written).
        `add`: users found (at `found_ms`, the upstream's clock); `drop`: users to forget
        (their schedule entry, state and snapshots). A listing commits only once it
        succeeded: that ends its account's run of failing reads and its back-off, as
        PollStore.commit's `answered` does."""
        script_keys: list[Any] = [
            keys.DISCOVERY_DUE,
            keys.discovery_state(account_id),
            keys.discovered_users(account_id),
            keys.POLL_DUE,
            keys.USER_WEIGHTS,
            keys.USERS_VERSION,
            keys.FAILING_ACCOUNTS,
            keys.BLOCKED_ACCOUNTS,
        ]
        args: list[Any] = [keys.account_member(account_id), token, outcome_score(outcome)]
        args += [found_ms, account_id]
        args += [*_state_args(state), len(add), *add, len(drop)]
        script_keys += [keys.user_state(account_id, user_id) for user_id in add]
        for user_id in drop:
            script_keys += [
                keys.snapshots(account_id, user_id),
                keys.user_state(account_id, user_id),
                keys.legacy_snapshots(account_id, user_id),
                keys.snapshots(account_id, user_id, COMPLETIONS),
            ]
            args += [user_id, keys.user_member(account_id, user_id)]
        with _committing("listing", account_id=account_id) as current:
            done = bool(await self._run(keys=script_keys, args=args))
            _committed(current, done)
        return done


class CommitAccounts(_Script):
    """LinkedAccountStore.commit."""

    source = "commit_accounts"

    async def __call__(
        self,
        *,
        token: int,
        outcome: EndLease,
        state: ReadState,
        write: dict[str, str],
        drop: dict[str, bool],
    ) -> bool:
        """A listing's findings, its state and the end of its lease in one atomic step.
        `write`: account id → its JSON (found, or changed); `drop`: account id → whether its
        state is to be forgotten (not a config account's). False: the lease was lost."""
        script_keys = [
            keys.ACCOUNT_LISTING_DUE,
            keys.ACCOUNT_LISTING_STATE,
            keys.LINKED_ACCOUNTS,
            keys.LINKED_VERSION,
            keys.NOT_LMS_ACCOUNTS,
            keys.FORGET_ACCOUNTS,
        ]
        args: list[Any] = [keys.ACCOUNT_LISTING, token, outcome_score(outcome)]
        args += _state_args(state)
        args += [len(write), *(x for pair in sorted(write.items()) for x in pair)]
        args += [len(drop), *(x for a, forget in sorted(drop.items()) for x in (a, int(forget)))]
        with _committing("accounts") as current:
            done = bool(await self._run(keys=script_keys, args=args))
            _committed(current, done)
        return done


class MarkNotLms(_Script):
    """LinkedAccountStore.mark_not_lms."""

    source = "mark_not_lms"

    async def __call__(self, account_id: str, retry_at_ms: int) -> bool:
        """Not read until `retry_at_ms`, while it is still linked; False when it was marked
        until then or later already, or is linked no longer (nothing written)."""
        script_keys = [keys.LINKED_ACCOUNTS, keys.NOT_LMS_ACCOUNTS, keys.LINKED_VERSION]
        return int(await self._run(keys=script_keys, args=[account_id, retry_at_ms])) > 0


class _Fenced(_Script):
    """A write fenced by the lease of the read that makes it (fence.lua's held): KEYS the
    lease's schedule, then `key`; ARGV the member and the token held, then the write's."""

    key: ClassVar[str]

    async def _write(self, held: Held, *args: Any) -> Any:
        schedule, member, token = held
        return await self._run(keys=[schedule, self.key], args=[member, token, *args])


class _FencedField(_Fenced):
    """An account's field of the `key` hash, fenced."""

    source = "set_fenced"

    async def __call__(self, held: Held, account_id: str, value: str) -> bool:
        """The account's `value` (JSON) while the `held` lease holds; False when it does
        not (nothing written)."""
        return bool(await self._write(held, account_id, value))


class BackOff(_FencedField):
    """PollStore.back_off_account: the account's AccountBackoff."""

    key = keys.BLOCKED_ACCOUNTS


class CountFailure(_Fenced):
    """PollStore.count_failure."""

    source = "count_failure"
    key = keys.FAILING_ACCOUNTS

    async def __call__(self, held: Held, account_id: str, ttl: int) -> int:
        """The account's failures in a row, one more, while the `held` lease holds; 0 when
        it does not (nothing written)."""
        return int(await self._write(held, account_id, ttl))


class PauseAccount(_Fenced):
    """PollStore.pause_account."""

    source = "pause_account"
    key = keys.PAUSED_ACCOUNTS

    async def __call__(
        self, held: Held, account_id: str, until_ms: int, now_ms: int, ttl: int
    ) -> bool:
        """False when the `held` lease does not hold (nothing written)."""
        return bool(await self._write(held, account_id, until_ms, now_ms, ttl))


class FallBack(_FencedField):
    """FeedStore.fall_back: the account's FeedFallback."""

    key = keys.FEED_FALLBACK


class MarkUnserved(_Fenced):
    """UnservedResources.mark."""

    source = "mark_unserved"
    key = keys.UNSERVED_RESOURCES

    async def __call__(self, held: Held, unserved_member: str, retry_at_ms: int) -> bool:
        """False when marked until then or later already, or the `held` lease does not hold
        (nothing written)."""
        return bool(await self._write(held, unserved_member, retry_at_ms))
