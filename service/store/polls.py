"""Poll state in Redis: who is due, each user's snapshots and watermark, the atomic commit."""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from redis.asyncio import Redis

from service import jsonfmt
from service.detect import Change, Snapshot
from service.store import keys
from service.store.limits import Budget
from service.store.scripts import CLAIM_DUE, COMMIT_OVERDUE, COMMIT_POLL, LOAD_USER

# endpoint id → [(event id, body as JSON bytes, due ms)]
RoutedEvents = dict[str, list[tuple[str, bytes | str, int]]]


def enqueue(events: RoutedEvents, script_keys: list[Any], args: list[Any]) -> None:
    """Append the (due, body) keys and the arguments the scripts' _ENQUEUE part reads."""
    for endpoint_id in sorted(events):
        ep = keys.EndpointKeys(endpoint_id)
        script_keys += [ep.due, ep.body]
        args.append(len(events[endpoint_id]))
        for event_id, body, due in events[endpoint_id]:
            args += [event_id, body, due]


def encode_snapshots(snapshots: dict[str, Snapshot]) -> str:
    """All of a user's snapshots as one value: {id: [sequence, record]} as JSON, deflated.

    One value per user, not a hash field per assignment: records of one user share most of
    their text, so together they deflate to about a fifth, and Redis keeps one entry, not ten.
    Base64, because the client decodes replies as text.
    """
    plain = jsonfmt.dumps_bytes({a: [s.sequence, s.record] for a, s in snapshots.items()})
    return base64.b64encode(zlib.compress(plain, 1)).decode()


def decode_legacy_snapshots(fields: dict[str, str]) -> dict[str, Snapshot]:
    """0.1's hash: one JSON {"s": sequence, "r": record} per assignment."""
    decoded = {name: json.loads(value) for name, value in fields.items()}
    return {a: Snapshot(int(d["s"]), d["r"]) for a, d in decoded.items()}


def decode_snapshots(raw: str | None) -> dict[str, Snapshot]:
    if not raw:
        return {}
    data = jsonfmt.loads(zlib.decompress(base64.b64decode(raw)))
    return {a: Snapshot(int(seq), record) for a, (seq, record) in data.items()}


@dataclass
class UserState:
    """What a poll needs to know about one user before it reads upstream."""

    fields: dict[str, str]
    raw_snapshots: str | None
    permit_wait: float = 0.0  # seconds until the upstream permit asked for; 0: granted
    # snapshots as 0.1 stored them (a hash), when the user has none in today's form yet
    legacy: dict[str, str] = field(default_factory=dict)

    @cached_property
    def snapshots(self) -> dict[str, Snapshot]:
        """Decoded on first use: a poll that reads no record never needs them."""
        if self.raw_snapshots is None and self.legacy:
            return decode_legacy_snapshots(self.legacy)
        return decode_snapshots(self.raw_snapshots)

    @property
    def watermark_ms(self) -> int | None:
        raw = self.fields.get("watermark")
        return int(raw) if raw else None

    @property
    def baselined(self) -> bool:
        return self.fields.get("baselined") == "1"

    @property
    def last_full_sync_ms(self) -> int | None:
        raw = self.fields.get("last_full_sync")
        return int(raw) if raw else None


@dataclass(slots=True)
class Outbox:
    """Changes of one poll waiting for their commit, with each event routed to its endpoints."""

    changes: list[Change] = field(default_factory=list)
    events: RoutedEvents = field(default_factory=dict)
    # overdue members to start watching (member → due ms) and to stop watching
    watch: dict[str, int] = field(default_factory=dict)
    unwatch: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changes)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class PollStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM_DUE)
        self._load = redis.register_script(LOAD_USER)
        self._commit = redis.register_script(COMMIT_POLL)
        self._commit_overdue = redis.register_script(COMMIT_OVERDUE)

    async def load_user(self, account_id: str, user_id: str, permit: Budget) -> UserState:
        """One round trip: the user's state, every snapshot, and a permit from `permit`."""
        wait_ms, flat, snaps, legacy = await self._load(
            keys=[
                keys.user_state(account_id, user_id),
                keys.snapshots(account_id, user_id),
                *permit.script_keys(),
                keys.legacy_snapshots(account_id, user_id),
            ],
            args=permit.script_args(),
        )
        return UserState(_pairs(flat), snaps, float(wait_ms) / 1000.0, _pairs(legacy))

    async def blocked_accounts(self) -> dict[str, dict[str, Any]]:
        raw = cast(dict[str, str], await self.redis.hgetall(keys.BLOCKED_ACCOUNTS))
        return {account: json.loads(value) for account, value in raw.items()}

    async def block_account(self, account_id: str, block: dict[str, Any]) -> None:
        await self.redis.hset(keys.BLOCKED_ACCOUNTS, account_id, json.dumps(block))

    async def unblock_account(self, account_id: str) -> None:
        await self.redis.hdel(keys.BLOCKED_ACCOUNTS, account_id)

    async def failures(self, account_id: str, user_id: str) -> int:
        raw = await self.redis.hget(keys.user_state(account_id, user_id), "failures")
        return int(raw or 0)

    async def commit(
        self,
        account_id: str,
        user_id: str,
        outbox: Outbox,
        *,
        token: int | None,
        next_score: int | None,
        state: dict[str, str] | None = None,
        snapshots: dict[str, Snapshot] | None = None,
    ) -> bool:
        """Snapshots, user state, outgoing events and the due score in one atomic step.

        `snapshots`: every snapshot of the user (they are stored as one value), or None to
        leave them as they are.

        False when `token` no longer holds the user's lease: another process took the user
        over, so nothing was written and this poll's results are dropped.
        """
        script_keys: list[Any] = [
            keys.POLL_DUE,
            keys.snapshots(account_id, user_id),
            keys.user_state(account_id, user_id),
            keys.OVERDUE,
            keys.legacy_snapshots(account_id, user_id),
        ]
        args: list[Any] = [
            keys.user_member(account_id, user_id),
            "" if token is None else token,
            "" if next_score is None else next_score,
            "" if snapshots is None else encode_snapshots(snapshots),
        ]
        state = state or {}
        args.append(len(state))
        for name, value in state.items():
            args += [name, value]
        args.append(len(outbox.watch))
        for member, due_ms in outbox.watch.items():
            args += [member, due_ms]
        args += [len(outbox.unwatch), *outbox.unwatch]
        enqueue(outbox.events, script_keys, args)
        return bool(await self._commit(keys=script_keys, args=args))

    async def claim_overdue(self, now_ms: int, lease_until_ms: int, limit: int) -> list[str]:
        """Claim watched due dates that have passed (leased like polls)."""
        flat: list[str] = await self._claim(
            keys=[keys.OVERDUE], args=[now_ms, lease_until_ms, limit]
        )
        return flat[::2]

    async def snapshot(self, account_id: str, user_id: str, assignment_id: str) -> Snapshot | None:
        raw = cast(str | None, await self.redis.get(keys.snapshots(account_id, user_id)))
        if raw is None:
            legacy = keys.legacy_snapshots(account_id, user_id)
            old = cast(str | None, await self.redis.hget(legacy, assignment_id))
            return decode_legacy_snapshots({assignment_id: old}).get(assignment_id) if old else None
        return decode_snapshots(raw).get(assignment_id)

    async def commit_overdue(self, member: str, token: int, events: RoutedEvents) -> bool:
        """Queue an overdue check's events (maybe none) and unwatch it, fenced, in one step."""
        script_keys: list[Any] = [keys.OVERDUE]
        args: list[Any] = [member, token]
        enqueue(events, script_keys, args)
        return bool(await self._commit_overdue(keys=script_keys, args=args))

    async def claim_due_users(
        self, now_ms: int, lease_until_ms: int, limit: int
    ) -> list[tuple[str, int]]:
        """Claim up to `limit` due users: (member, when it was due, ms). Each claimed member's
        token is `lease_until_ms`."""
        flat: list[str] = await self._claim(
            keys=[keys.POLL_DUE], args=[now_ms, lease_until_ms, limit]
        )
        return [(flat[i], int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def add_users(self, scores: dict[str, int]) -> int:
        """Schedule users not yet scheduled (ZADD NX): running leases stay untouched."""
        if not scores:
            return 0
        added = await self.redis.zadd(keys.POLL_DUE, dict(scores), nx=True)
        return int(added or 0)

    async def oldest_due_ms(self) -> float | None:
        """The earliest due time of any user (a running poll's lease counts as not due)."""
        first = await self.redis.zrange(keys.POLL_DUE, 0, 0, withscores=True)
        return float(cast(list[tuple[str, float]], first)[0][1]) if first else None

    async def scheduled_users(self) -> dict[str, float]:
        raw = await self.redis.zrange(keys.POLL_DUE, 0, -1, withscores=True)
        pairs = cast(list[tuple[str, float]], raw)
        return dict(pairs)

    async def remove_users(self, members: list[str]) -> None:
        if members:
            await self.redis.zrem(keys.POLL_DUE, *members)

    async def reschedule(self, member: str, token: int, score: int, state: dict[str, str]) -> bool:
        """Release a failed poll's lease (fenced) with a new due time and its failure state."""
        account_id, user_id = keys.parse_user_member(member)
        return await self.commit(
            account_id, user_id, Outbox(), token=token, next_score=score, state=state
        )

    async def poll_now(self, account_id: str, user_id: str) -> bool:
        """Make a scheduled user due at once (XX: an untracked user is not added)."""
        changed = await self.redis.zadd(
            keys.POLL_DUE, {keys.user_member(account_id, user_id): 0}, xx=True, ch=True
        )
        return bool(changed)
