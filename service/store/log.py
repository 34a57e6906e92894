"""The delivery log in Redis: every event queued (its head and its body as sent) and every
attempt at delivering it, per endpoint, for `delivery.log_retention` and at most
`delivery.log_max_per_endpoint` events per endpoint (docs/architecture.md, The delivery log).

It is written by the scripts that queue and settle events, in the round trips they make
anyway: enqueue.lua (the event, once, whatever the number of endpoints), ack_events.lua,
move_event.lua and dead_letter_event.lua (each attempt and the outcome it leaves), and
trimmed by the commits that add to it (lua/log.lua). This module reads it, queues logged
events again (redeliver) and records events sent outside the queue (test sends).

Each event's body is kept once per change, compressed, where the events of a change share
it (log_body; docs/architecture.md): put back together byte for byte when read.

Response bodies are the receivers' words: kept as text, shown as text, never interpreted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast, get_args

import orjson
from redis.asyncio import Redis

from service import jsonfmt
from service.changes.outbox import EventHead
from service.contract import admin as m
from service.cursor import decode_cursor, encode_cursor
from service.resources import COMPLETIONS
from service.store import keys, log_body
from service.store.log_policy import LogPolicy
from service.store.scripts import LogSent, Redeliver

OUTCOMES: tuple[str, ...] = get_args(m.Outcome)  # an event's at one endpoint
RESPONSE_BODY_BYTES = 1024  # of each answer, the log keeps this much (and says if it was more)
KEEP_ATTEMPTS = 20  # attempt records kept per event and endpoint (lua/log.lua keeps them)
RECENT_ATTEMPTS = 500  # an endpoint's recent attempts kept in order (lua/log.lua)
# One listing request scans at most this many index entries, whatever its filters: a filter
# that matches little answers a short page (maybe empty) with a cursor to continue.
MAX_SCAN = 2000
SCAN_BATCH = 200
_CURSOR = "log"


# An attempt's record as the log keeps it: a JSON array of these, in this order (a quarter of
# the bytes of an object, per attempt of every event, and quicker to write on each delivery)
ATTEMPT_FIELDS = (
    "attempt",
    "started_at_ms",
    "duration_ms",
    "status",
    "error",
    "response_body",
    "response_truncated",
    "next_attempt_at_ms",
)


def attempt_record(
    *,
    attempt: int,
    started_at_ms: int,
    duration_ms: float,
    status: int | None,
    error: str | None,
    response: bytes | None,
    next_attempt_at_ms: int | None,
) -> str:
    """One attempt as the log keeps it. `response`: the first bytes of the answer's body as
    read; RESPONSE_BODY_BYTES of them are kept (more read: truncated), as text whatever the
    bytes (an undecodable one becomes U+FFFD)."""
    body = None if response is None else response[:RESPONSE_BODY_BYTES]
    return orjson.dumps(
        (
            attempt,
            started_at_ms,
            duration_ms,
            status,
            error,
            None if body is None else body.decode("utf-8", "replace"),
            response is not None and len(response) > RESPONSE_BODY_BYTES,
            next_attempt_at_ms,
        )
    ).decode()


def attempt_fields(record: str) -> dict[str, Any]:
    """An attempt's record by name."""
    return dict(zip(ATTEMPT_FIELDS, orjson.loads(record), strict=True))


@dataclass(frozen=True, slots=True)
class LogFilter:
    """What a listing asks for; None: anything."""

    endpoint: str | None = None
    type: str | None = None
    account_id: str | None = None
    user_id: str | None = None
    assignment_id: str | None = None
    completion_id: str | None = None
    outcome: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def narrows(self) -> bool:
        """Whether entries of the index may not match (beyond the time range)."""
        return any(
            v is not None
            for v in (
                self.type,
                self.account_id,
                self.user_id,
                self.assignment_id,
                self.completion_id,
                self.outcome,
            )
        )


# The hash's fields holding an event's head (lua/log.lua): h its type and when logged, t its
# timestamp, c u g its account, user and record: the assignment's or the completion's, as
# its type says (absent: none)
HEAD_FIELDS = ("h", "t", "c", "u", "g")


class LoggedHead(NamedTuple):
    """An event's head as the log keeps it (scripts.log_head), read once."""

    head: EventHead
    logged_at_ms: int

    @classmethod
    def of(cls, values: Sequence[str | None]) -> LoggedHead:
        """From the values of HEAD_FIELDS, h present (an entry logged before the head was
        split keeps it all in h: see scripts.log_head)."""
        kind, at, *rest = cast(str, values[0]).split("\x1f", 5)
        timestamp, account, user, record = rest or values[1:5]
        return cls(
            EventHead(kind, timestamp or "", account or None, user or None, record or None),
            int(at),
        )

    def summary(self, event_id: str) -> dict[str, Any]:
        """What a listing shows of the event (its record named as its type says): the
        fields of m.EventSummary but its endpoints'."""
        kind, timestamp, account, user, record = self.head
        completion = COMPLETIONS.owns(kind)
        return {
            "id": event_id,
            "type": kind,
            "timestamp": timestamp or None,
            "logged_at_ms": self.logged_at_ms,
            "account_id": account,
            "user_id": user,
            "assignment_id": None if completion else record,
            "completion_id": record if completion else None,
        }


def _outcome(raw: str | None) -> m.EndpointOutcome | None:
    """'<outcome> <attempts>' as the scripts write it."""
    if not raw:
        return None
    outcome, _, attempts = raw.partition(" ")
    # the scripts write only outcomes of m.Outcome, and the model checks it
    return m.EndpointOutcome(outcome=cast(m.Outcome, outcome), attempts=int(attempts or 0))


def _older(entry: tuple[float, str], than: tuple[float, str]) -> bool:
    """Whether `entry` comes after `than` newest first (score, then id, both descending, as
    ZREVRANGE orders them; Python orders str as Redis orders their UTF-8 bytes)."""
    return entry[0] < than[0] or (entry[0] == than[0] and entry[1] < than[1])


class DeliveryLog:
    def __init__(self, redis: Redis, policy: LogPolicy, endpoint_ids: list[str]) -> None:
        """`endpoint_ids`: the configured endpoints, whose outcomes a listing shows."""
        self.redis = redis
        self.policy = policy
        self.endpoint_ids = endpoint_ids
        self._redeliver = Redeliver(redis)
        self._log_sent = LogSent(redis)

    # -- reading --

    async def events(
        self, filters: LogFilter, limit: int, cursor: str | None
    ) -> tuple[list[m.EventSummary], str | None]:
        """Logged events matching `filters`, newest first: (up to `limit` summaries, a
        cursor to continue or None at the end). At most MAX_SCAN index entries are looked
        at, so a page may hold fewer than `limit` (even none) while the cursor is not None.

        The cursor holds the last entry looked at (its time and id); the next page starts
        below it wherever it stands then, so events logged meanwhile neither repeat nor
        shift what follows."""
        index = (
            keys.LOG_EVENTS if filters.endpoint is None else keys.EndpointKeys(filters.endpoint).log
        )
        position: tuple[float, str] | None = None
        if cursor is not None:
            score, member = decode_cursor(cursor, _CURSOR, (int, str))
            position = (float(score), member)
            start = await self._start_after(index, position)
        elif filters.until_ms is not None:
            start = await self.redis.zcount(index, f"({filters.until_ms}", "+inf")
        else:
            start = 0
        fields = [*HEAD_FIELDS, *(f"o:{e}" for e in self.endpoint_ids)]
        batch_size = SCAN_BATCH if filters.narrows else min(SCAN_BATCH, limit + 1)
        items: list[m.EventSummary] = []
        scanned = 0
        while True:
            raw = await self.redis.zrevrange(index, start, start + batch_size - 1, withscores=True)
            batch = cast(list[tuple[str, float]], raw)
            if not batch:
                return items, None
            start += len(batch)
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, _ in batch:
                    pipe.hmget(keys.log_event(member), fields)
                found = await pipe.execute()
            for (member, score), values in zip(batch, found, strict=True):
                entry = (score, member)
                if position is not None and not _older(entry, position):
                    continue  # logged since the page began, above it: ranks moved down
                if filters.until_ms is not None and score > filters.until_ms:
                    continue
                if filters.since_ms is not None and score < filters.since_ms:
                    return items, None
                position = entry
                scanned += 1
                summary = self._summary(member, values)
                if summary is not None and self._matches(summary, filters):
                    items.append(summary)
                    if len(items) == limit:
                        return items, self._cursor(position)
                if scanned >= MAX_SCAN:
                    return items, self._cursor(position)

    async def _start_after(self, index: str, position: tuple[float, str]) -> int:
        """The rank (newest first) of the first entry after `position`."""
        score, member = position
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zscore(index, member)
            pipe.zrevrank(index, member)
            pipe.zcount(index, score, "+inf")
            now_score, rank, at_or_above = await pipe.execute()
        if now_score is not None and float(now_score) == score and rank is not None:
            return int(rank) + 1
        # that entry left the log (trimmed): everything at its time or newer is behind us
        return int(at_or_above)

    @staticmethod
    def _cursor(position: tuple[float, str]) -> str:
        return encode_cursor(_CURSOR, int(position[0]), position[1])

    def _summary(self, event_id: str, values: list[str | None]) -> m.EventSummary | None:
        head, outcomes = values[: len(HEAD_FIELDS)], values[len(HEAD_FIELDS) :]
        if head[0] is None:
            return None  # its hash ran out before a trim removed it from the index
        endpoints = {}
        for endpoint_id, raw in zip(self.endpoint_ids, outcomes, strict=True):
            if (outcome := _outcome(raw)) is not None:
                endpoints[endpoint_id] = outcome
        return m.EventSummary(**LoggedHead.of(head).summary(event_id), endpoints=endpoints)

    @staticmethod
    def _matches(summary: m.EventSummary, f: LogFilter) -> bool:
        for found, wanted in (
            (summary.type, f.type),
            (summary.account_id, f.account_id),
            (summary.user_id, f.user_id),
            (summary.assignment_id, f.assignment_id),
            (summary.completion_id, f.completion_id),
        ):
            if wanted is not None and found != wanted:
                return False
        if f.outcome is None:
            return True
        endpoints = summary.endpoints
        if f.endpoint is not None:
            there = endpoints.get(f.endpoint)
            return there is not None and there.outcome == f.outcome
        return any(e.outcome == f.outcome for e in endpoints.values())

    async def event(self, event_id: str) -> m.Event | None:
        """One logged event: its summary, its body as sent (parsed), and every attempt kept,
        per endpoint, oldest first; None when it is not (or no longer) logged."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.log_event(event_id)))
        if "h" not in raw:
            return None
        endpoints: dict[str, m.EndpointOutcome] = {}
        attempts: dict[str, list[tuple[int, m.Attempt]]] = {}
        for field, value in raw.items():
            if field.startswith("o:") and (outcome := _outcome(value)) is not None:
                endpoints[field[2:]] = outcome
            elif field.startswith("a:"):
                endpoint_id, _, number = field[2:].rpartition(":")
                attempt = m.Attempt(**attempt_fields(value))
                attempts.setdefault(endpoint_id, []).append((int(number), attempt))
        head = LoggedHead.of([raw.get(name) for name in HEAD_FIELDS])
        text = await self._body(event_id, raw, head)
        try:
            body: Any = jsonfmt.loads(text or "")
        except ValueError:  # not one of ours; shown as the text it is
            body = text
        return m.Event(
            **head.summary(event_id),
            endpoints=endpoints,
            body=body,
            attempts={
                endpoint_id: [record for _, record in sorted(records, key=lambda r: r[0])]
                for endpoint_id, records in sorted(attempts.items())
            },
        )

    async def body_as_sent(self, event_id: str) -> str | None:
        """The event's body, the very text signed and sent; None when it is not logged."""
        names = (*HEAD_FIELDS, "b", "d")
        found = cast(list[str | None], await self.redis.hmget(keys.log_event(event_id), names))
        raw = {name: value for name, value in zip(names, found, strict=True) if value is not None}
        if "h" not in raw:
            return None
        return await self._body(event_id, raw, LoggedHead.of([raw.get(n) for n in HEAD_FIELDS]))

    async def _body(self, event_id: str, raw: dict[str, str], logged: LoggedHead) -> str | None:
        """The event's body as sent: kept whole (b), or put back together from its head and
        the `data` its change's events share (d; log_body); None if that is gone."""
        if "d" not in raw:
            return raw.get("b")
        value = cast(str | None, await self.redis.get(raw["d"]))
        if value is None:
            return None
        try:
            stored = log_body.from_shared(value)
            return log_body.rejoin(event_id, logged.head.type, logged.head.timestamp, stored)
        except ValueError:  # damaged: the event is still shown, without its body
            return None

    async def endpoint_attempts(self, endpoint_id: str, limit: int) -> list[m.EndpointAttempt]:
        """The endpoint's most recent attempts, newest first, each with its event's id and
        type (at most RECENT_ATTEMPTS are kept)."""
        raw = await self.redis.lrange(keys.EndpointKeys(endpoint_id).attempts, 0, limit - 1)
        out = []
        for entry in cast(list[str], raw):
            event_id, kind, record = entry.split("\t", 2)
            out.append(
                m.EndpointAttempt(event_id=event_id, type=kind or None, **attempt_fields(record))
            )
        return out

    # -- writing outside the settle path --

    async def redeliver(
        self,
        endpoint_id: str,
        *,
        since_ms: int,
        until_ms: int,
        outcome: str,
        now_ms: int,
        never: str,
    ) -> int:
        """The endpoint's logged events of [since, until] whose outcome there is `outcome`
        (delivered, dead, any: either), except those of type `never`, queued again with
        their ids and bodies, due at `now_ms`, in one atomic step; returns how many."""
        return await self._redeliver(
            endpoint_id,
            since_ms=since_ms,
            until_ms=until_ms,
            outcome=outcome,
            now_ms=now_ms,
            never=never,
        )

    async def record_sent(
        self,
        endpoint_id: str,
        event_id: str,
        head: EventHead,
        body: bytes,
        *,
        at_ms: int,
        delivered: bool,
        record: str,
    ) -> None:
        """An event sent outside the queue (a test send): logged with its one attempt, as
        delivered or, since it is never retried, dead."""
        await self._log_sent(
            self.policy,
            endpoint_id,
            event_id,
            head,
            body,
            at_ms=at_ms,
            outcome="delivered" if delivered else "dead",
            record=record,
        )
