"""Every Redis key the service uses, in one place.

Ids are percent-encoded inside keys and members, so `a:b` + `c` never collides with `a` + `b:c`.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from service.resources import ASSIGNMENTS, RESOURCES, Resource

PREFIX = "lw"
# each resource's snapshots under a namespace of their own; assignments keep 0.1's
_SNAPSHOTS = {"assignments": "snaps", "completions": "csnaps"}
_LEGACY_SNAPSHOTS = {"assignments": "snap", "completions": "csnap"}

# zset: user member → when it is next due for a poll (epoch ms). A claimed user's score is
# its lease expiry, which doubles as the fencing token of the poll that holds it.
POLL_DUE = f"{PREFIX}:poll:due"
# set: user members added at run time (admin API), beside the config's users.
RUNTIME_USERS = f"{PREFIX}:users:runtime"
# string: a counter moved whenever users are added or removed at run time or by a listing,
# so a process's caches of who is baselined know to look again.
USERS_VERSION = f"{PREFIX}:users:version"
# string with a TTL: while it exists every process pauses the upstream API key (429/408).
UPSTREAM_PAUSE = f"{PREFIX}:upstream:pause"
# hash: account id → JSON {until, failures, error} while 401/403/412, or its reads failing
# in a row, back the account off; ended as FAILING_ACCOUNTS' field is, by a successful read.
BLOCKED_ACCOUNTS = f"{PREFIX}:accounts:blocked"
# hash with a TTL: account id → how many of its reads failed in a row (5xx, timeouts, broken
# connections; any member, any process); the commit that ends a successful read deletes its
# field (commit_poll, commit_feed, commit_listing.lua), whichever process counted it.
FAILING_ACCOUNTS = f"{PREFIX}:accounts:failing"
# zset with a TTL: account id → until when (epoch ms, the service's clock, like a back-off)
# its provider asked it to wait (a 429 with `provider_errors`). Entries that are over are
# dropped at the next pause; the TTL outlasts any Retry-After, so the key goes when idle.
PAUSED_ACCOUNTS = f"{PREFIX}:accounts:paused"
# zset: overdue member (user, assignment, due date) → the due date (ms); claimed like POLL_DUE.
OVERDUE = f"{PREFIX}:overdue"
# zset: account member → when its change feed is next read (ms); leased like POLL_DUE.
FEED_DUE = f"{PREFIX}:feed:due"
# hash: account id → JSON FeedFallback, while a `strategy: auto` account is polled per user.
FEED_FALLBACK = f"{PREFIX}:feed:fallback"
# zset: account member → when its user listing is next read (ms); leased like POLL_DUE.
DISCOVERY_DUE = f"{PREFIX}:discovery:due"
# Account discovery (`account_discovery`, store/linked_accounts.py). hash: account id → JSON
# LinkedAccount, the public fields of every linked account the listing returned (never its
# credentials), active or not.
LINKED_ACCOUNTS = f"{PREFIX}:accounts:linked"
# string: a counter moved whenever LINKED_ACCOUNTS or NOT_LMS_ACCOUNTS change, so each
# process's AccountDirectory knows to read them again.
LINKED_VERSION = f"{PREFIX}:accounts:linked:version"
# zset: account id → when (ms) a linked account whose LMS routes answered that it is no LMS
# account is tried again (daily); not read until then.
NOT_LMS_ACCOUNTS = f"{PREFIX}:accounts:not_lms"
# set: the linked accounts a complete listing left out when it left out more than half (held
# until a second complete listing agrees, as `held_drop` for users); expires.
HELD_ACCOUNT_DROP = f"{PREFIX}:accounts:held"
# zset: ACCOUNT_LISTING → when the linked accounts are next listed (ms); leased like POLL_DUE.
ACCOUNT_LISTING_DUE = f"{PREFIX}:accounts:listing:due"
# hash: the linked-account listing's ReadState (last complete listing, mass_drop, failures).
ACCOUNT_LISTING_STATE = f"{PREFIX}:accounts:listing:state"
# set: linked accounts a listing found unlinked whose state (users, snapshots, feed and
# listing state, schedule entries) is still being forgotten, in batches: a process that dies
# midway leaves them here, and the next listing, wherever it runs, finishes.
FORGET_ACCOUNTS = f"{PREFIX}:accounts:forget"
# zset: unserved_member(account, resource) → until when (ms) a tracked resource after an
# account's first, whose routes its provider does not serve (400/404/501), is not read.
UNSERVED_RESOURCES = f"{PREFIX}:resources:unserved"
# The one member of ACCOUNT_LISTING_DUE: no quoted account id is `*` (quote escapes it).
ACCOUNT_LISTING = "*"
# string: the budget plan last published (JSON), for the admin API and to log each change once.
BUDGET_PLAN = f"{PREFIX}:budget:plan"
# hash: what reads cost, learned (store.read_costs.ReadCosts): pages and reads by kind, pages
# of each full read. Under `budget:` as an input of the plan; the name stays across upgrades.
READ_COSTS = f"{PREFIX}:budget:learned"
# zset: user member → the weight of its poll (service.reading.plan.user_weight), for `adaptive`.
USER_WEIGHTS = f"{PREFIX}:budget:weights"
# string with a TTL: written by every readiness check, since a write is what tells whether
# Redis takes the service's commits (out of memory, a replica, away); its value is unused.
READY_PROBE = f"{PREFIX}:ready:probe"

# The delivery log (store/log.py). zset: event id → when the log recorded it (ms), every
# event logged, for listing them newest first.
LOG_EVENTS = f"{PREFIX}:log:events"
# `log_event(id)`, the hash of one logged event: its head (type, timestamp, account, user,
# assignment), its body as sent, and per endpoint its outcome and attempts (lua/log.lua).
# The Lua scripts name an event's hash by this prefix and its id, not by a key each: a
# commit of thousands of events would pass thousands of keys.
LOG_EVENT_PREFIX = f"{PREFIX}:log:ev:"
# `EndpointKeys.log`: zset, event id → when logged (ms), the events queued for the endpoint.
# The scripts that trim the log name an endpoint's by this prefix and the endpoint id.
LOG_ENDPOINT_PREFIX = f"{PREFIX}:log:ep:"


# `log_data(event_id)`, string: the `data` shared by a change's logged events (see
# store/log_body.py), behind the count of the events that hold it, named after the first of
# them (an event id names its change's content, so the same id always means the same
# `data`); each event's hash names it (field d). The last holder to leave the log deletes
# it; its TTL is theirs.
LOG_DATA_PREFIX = f"{PREFIX}:log:data:"


def log_data(event_id: str) -> str:
    return LOG_DATA_PREFIX + event_id


def log_event(event_id: str) -> str:
    """The id as it is: it ends the key, so no two ids can share one (and Lua appends it to
    LOG_EVENT_PREFIX the same way)."""
    return LOG_EVENT_PREFIX + event_id


def _q(value: str) -> str:
    return quote(value, safe="")


def user_member(account_id: str, user_id: str) -> str:
    return f"{_q(account_id)}:{_q(user_id)}"


def parse_user_member(member: str) -> tuple[str, str]:
    """(account id, user id); an account member gives (account id, "")."""
    account, _, user = member.partition(":")
    return unquote(account), unquote(user)


def account_member(account_id: str) -> str:
    """An account in FEED_DUE and DISCOVERY_DUE (parse_user_member reads it too)."""
    return _q(account_id)


def unserved_member(account_id: str, resource: Resource) -> str:
    """An account's resource in UNSERVED_RESOURCES (parse_user_member reads it too)."""
    return f"{account_member(account_id)}:{resource.name}"


def overdue_member(account_id: str, user_id: str, assignment_id: str, due_ms: int) -> str:
    return f"{user_member(account_id, user_id)}:{_q(assignment_id)}:{due_ms}"


def parse_overdue_member(member: str) -> tuple[str, str, str, int]:
    account, user, assignment, due = member.split(":")
    return unquote(account), unquote(user), unquote(assignment), int(due)


def snapshots(account_id: str, user_id: str, resource: Resource = ASSIGNMENTS) -> str:
    """string: every snapshot of the user's records of one resource, encoded together
    (store.snapshots.encode_snapshots)."""
    return f"{PREFIX}:{_SNAPSHOTS[resource.name]}:{user_member(account_id, user_id)}"


def legacy_snapshots(account_id: str, user_id: str, resource: Resource = ASSIGNMENTS) -> str:
    """hash: assignment id → JSON {"s": sequence, "r": record}, as 0.1 stored snapshots. Read
    when `snapshots` is missing; removed by the first commit that writes `snapshots`. 0.1
    kept no completions: theirs is never written (read and deleted like the others, so
    every resource goes through the same scripts)."""
    return f"{PREFIX}:{_LEGACY_SNAPSHOTS[resource.name]}:{user_member(account_id, user_id)}"


def every_snapshots(account_id: str, user_id: str) -> list[str]:
    """The user's snapshots of every resource (and 0.1's), to forget them all at once."""
    return [
        key(account_id, user_id, resource)
        for resource in RESOURCES.values()
        for key in (snapshots, legacy_snapshots)
    ]


def user_state(account_id: str, user_id: str) -> str:
    """hash: the user poll's ReadState (watermark, baselined, last_full_sync, last_poll,
    failures, last_error), and `due_now` while a poll asked for (poll now) waits for the
    running one to end (due_now.lua)."""
    return f"{PREFIX}:user:{user_member(account_id, user_id)}"


def feed_state(account_id: str) -> str:
    """hash: the account change feed's ReadState (watermark and its anchor, last full read,
    failures), and
    `due_now` as in `user_state`."""
    return f"{PREFIX}:feed:{account_member(account_id)}"


def discovery_state(account_id: str) -> str:
    """hash: the account user listing's ReadState (watermark, last complete listing)."""
    return f"{PREFIX}:discovery:{account_member(account_id)}"


def discovered_users(account_id: str) -> str:
    """set: the user ids the account's user listing names (`users: all`)."""
    return f"{PREFIX}:users:listed:{account_member(account_id)}"


def held_drop(account_id: str) -> str:
    """set: the users a complete listing left out when it left out more than half (held
    until a second complete listing agrees: only users both leave out are forgotten);
    expires."""
    return f"{PREFIX}:users:held:{account_member(account_id)}"


def console_signed_out(session_id: str) -> str:
    """string with a TTL (the rest of the session's lifetime): the console session with
    this id (its cookie's nonce) was signed out, and its cookie no longer signs anyone in."""
    return f"{PREFIX}:console:out:{_q(session_id)}"


def rate_limit(name: str) -> str:
    """string: a GCRA limiter's theoretical arrival time (ms), of the rate limit `name`."""
    return f"{PREFIX}:rate:{_q(name)}"


# The names of the shared rate limits (store.limits.RateLimit), each a `rate_limit` key.
UPSTREAM_RATE = "upstream"  # the API key's, shared by every account


def endpoint_rate(endpoint_id: str) -> str:
    """An endpoint's `max_per_second`, shared by every process."""
    return f"endpoint:{endpoint_id}"


class EndpointKeys:
    """The keys of one endpoint's queue and state."""

    def __init__(self, endpoint_id: str) -> None:
        base = f"{PREFIX}:ep:{_q(endpoint_id)}"
        # zset: event id → due time (ms); a claimed event's score is its lease expiry.
        self.due = f"{base}:due"
        # hash: event id → webhook body, exactly the bytes signed and sent.
        self.body = f"{base}:body"
        # hash: event id → JSON {attempts, last_error, ...}, written on the first failure
        # (or, while tracing is on, when queued: {traceparent}, which the attempts keep).
        self.meta = f"{base}:meta"
        # zset: event id → when it was dead-lettered (ms); body and meta are kept.
        self.dead = f"{base}:dead"
        # hash: the circuit breaker's EndpointHealth (status, failures, last error, ...).
        self.state = f"{base}:state"
        # string with a TTL: held by the one process probing a paused endpoint.
        self.probe = f"{base}:probe"
        # the delivery log: zset, event id → when logged (ms), this endpoint's events (the
        # id as it is, as for log_event: Lua appends it to LOG_ENDPOINT_PREFIX)
        self.log = LOG_ENDPOINT_PREFIX + endpoint_id
        # list: the endpoint's most recent attempts, newest first ("id\ttype\trecord JSON")
        self.attempts = f"{base}:attempts"


# every endpoint's `EndpointKeys.due`, for SCAN
ENDPOINT_QUEUES = f"{PREFIX}:ep:*:due"
