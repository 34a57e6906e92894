"""What the HTTP API answers and takes, as models: Operations builds its answers as these
models (validated strictly as they are built), the API serializes them
(`service/api/common.py`, `answer`) and parses its request bodies into them, and
`/openapi.json` describes them from the same models, so a field the code adds without the
model fails the request (and the suite) instead of going undocumented.

Times: `..._ms` are epoch milliseconds, other instants epoch seconds (floats)."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeGuard

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from service import endpoint_health
from service.config import TrackedName
from service.endpoint_health import EndpointState
from service.user_ids import USER_ID_SCHEMA

Outcome = Literal["queued", "delivered", "dead"]  # an event's at one endpoint
RedeliverOutcome = Literal["delivered", "dead", "any"]
Cursor = Annotated[
    str | None, Field(description="pass it as `cursor` for the next page; null: the end")
]
Strategy = Literal["per_user", "account", "auto"]


class Answer(BaseModel):
    """Exactly these fields, each of its type: an answer built with a field the model lacks,
    or a value of another type, fails where it is built (a bug: 500, logged)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Error(Answer):
    error: str
    detail: Any = None


# -- health ------------------------------------------------------------------------------


class Liveness(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    ready: bool
    checks: dict[str, bool | str] = Field(
        description='each check true, or why not (e.g. `"redis": "out of memory"`, '
        '`"unreachable"`, `"no primary"`, `"read only"`; a worker: false)'
    )


# -- endpoints ---------------------------------------------------------------------------


class EndpointHealth(Answer):
    """An endpoint's state as every process sees it (`service/endpoint_health.py`)."""

    id: str
    status: EndpointState
    consecutive_failures: int
    failing_since: float | None
    paused_until: float | None
    last_error: str | None
    last_success_at: float | None
    disabled_reason: str | None
    pauses: int = Field(description="pauses in a row: the first, then one per failed probe")
    hold_until: float | None = Field(
        description="a receiver's Retry-After holds every delivery until then"
    )

    @classmethod
    def of(cls, endpoint_id: str, health: endpoint_health.EndpointHealth, **more: Any) -> Self:
        """The endpoint's health as every process sees it, and `more` (an Endpoint's)."""
        return cls(id=endpoint_id, **asdict(health), **more)


class Endpoint(EndpointHealth):
    url: str
    queue_depth: int
    dead_letters: int


class EndpointPage(Answer):
    endpoints: list[Endpoint]
    next_cursor: Cursor


class TestSend(Answer):
    event_id: str
    delivered: bool
    status: int | None = Field(description="null: no answer")
    error: str | None
    duration_ms: float


class Queued(Answer):
    endpoint: str
    queued: int = Field(ge=0)


class DeadLetter(Answer):
    """A dead-lettered event with what its attempts left behind."""

    event_id: str
    dead_at_ms: int
    event: Any = Field(description="the webhook body, parsed")
    attempts: int
    last_error: str | None
    last_status: int | None
    last_attempt_at: float | None


class DeadLetters(Answer):
    endpoint: str
    dead_letters: list[DeadLetter]


# -- the delivery log --------------------------------------------------------------------


class EndpointOutcome(Answer):
    outcome: Outcome
    attempts: int = Field(ge=0)


class EventSummary(Answer):
    id: str
    type: str
    timestamp: str | None = Field(
        description="the event's own (ISO 8601): when its change was detected"
    )
    logged_at_ms: int = Field(description="when the log recorded it")
    account_id: str | None
    user_id: str | None
    assignment_id: str | None
    completion_id: str | None
    endpoints: dict[str, EndpointOutcome] = Field(
        description="endpoint id → its outcome there and the attempts made"
    )


class Attempt(Answer):
    attempt: int = Field(description="its number in the retry schedule")
    started_at_ms: int
    duration_ms: float
    status: int | None = Field(description="null: no answer")
    error: str | None
    response_body: str | None = Field(
        description="the first 1 KiB of the answer's body, as text (untrusted)"
    )
    response_truncated: bool
    next_attempt_at_ms: int | None = Field(description="null: none")


class EndpointAttempt(Attempt):
    """One of an endpoint's recent attempts (the console's endpoint page), with its event."""

    event_id: str
    type: str | None


class Event(EventSummary):
    body: Any = Field(description="the webhook body exactly as sent, parsed")
    attempts: dict[str, list[Attempt]] = Field(
        description="endpoint id → its attempts, oldest first"
    )


class EventPage(Answer):
    items: list[EventSummary]
    next_cursor: Cursor


# -- users and accounts ------------------------------------------------------------------


class AccountBackoff(Answer):
    """An account whose key or integration was refused (401/403/412): its users wait."""

    until: float
    failures: int
    error: str


UserSource = Literal["config", "listing", "runtime"]


class User(Answer):
    account_id: str
    user_id: str
    source: UserSource
    next_poll_at_ms: int | None
    watermark_ms: int | None
    last_poll_ms: int | None
    last_full_sync_ms: int | None
    failures: int
    last_error: str | None


class UserPage(Answer):
    users: list[User]
    backed_off_accounts: dict[str, AccountBackoff]
    next_cursor: Cursor


class UserAdded(Answer):
    account_id: str
    user_id: str
    added: bool


class UserRemoved(Answer):
    account_id: str
    user_id: str
    removed: Literal[True]


class PollQueued(Answer):
    account_id: str
    user_id: str


class ReadState(Answer):
    """A feed's or a listing's reads."""

    watermark_ms: int | None
    last_read_ms: int | None
    last_full_read_ms: int | None
    next_read_at_ms: int | None
    failures: int
    last_error: str | None


class FeedFallback(Answer):
    """Why a `strategy: auto` account is polled per user, since and until when."""

    reason: str
    since: float
    retry_at: float


AccountState = Literal["active", "paused", "backed_off", "not_lms", "inactive"]
AccountSource = Literal["config", "discovery"]
StrategyInForce = Literal["per_user", "account"]


class AccountOwner(Answer):
    id: str | None
    name: str | None


class UnservedResource(Answer):
    """A tracked resource the account's provider does not serve (its route answered 400,
    404 or 501): not read for that account until then, its other resources are."""

    resource: TrackedName
    until_ms: int = Field(description="when it is asked for again")


class Account(Answer):
    account_id: str
    source: AccountSource
    state: AccountState = Field(
        description="the first that holds: not_lms, inactive (both not read), backed_off, "
        "paused, active"
    )
    strategy: Strategy
    strategy_in_force: StrategyInForce | None = Field(description="null: not read")
    fallback: FeedFallback | None
    users: Literal["all", "listed"]
    users_tracked: int
    feed: ReadState | None
    listing: ReadState | None
    backoff: AccountBackoff | None
    paused_until: float | None = Field(
        description="until when (epoch seconds) the account's provider asked it to wait "
        "(a 429 with provider_errors); its reads wait, the other accounts' go on"
    )
    unserved: list[UnservedResource] = Field(
        description="the tracked resources its provider does not serve, skipped until "
        "`until_ms`; empty: none (or not read)"
    )
    # a discovered account's linked account (untrusted upstream text); null for others
    provider: str | None
    provider_name: str | None
    label: str | None
    owner: AccountOwner | None = Field(
        description="the linked account's origin_owner_id and origin_owner_name"
    )
    status: str | None = Field(description="active, inactive or error")
    status_reasons: list[str]
    last_read_ms: int | None = Field(
        description="the last read that succeeded of its feed, user listing or users"
    )
    lag_seconds: float | None = Field(
        description="how long its most overdue read has been due; 0: on time; null: not read"
    )
    last_error: str | None


class AccountList(Answer):
    accounts: list[Account]
    next_cursor: Cursor


class Upstream(Answer):
    """What the upstream API has told us to slow down (the console's overview)."""

    responses_429: int = Field(description="429 answers this process has had")
    paused_for_seconds: float | None = Field(description="the key's Retry-After pause left")


# -- the budget plan ---------------------------------------------------------------------


class Intervals(Answer):
    per_user: float
    account: float
    listing: float
    full_resync: float


class UsersByStrategy(Answer):
    per_user: int
    account: int


class AccountsByStrategy(Answer):
    account: int
    listing: int


class IntervalBounds(Answer):
    min_interval_seconds: float
    max_interval_seconds: float


class AdaptiveBounds(IntervalBounds):
    """Users' bounds, and accounts' feeds' (by how busy each account is)."""

    accounts: IntervalBounds


class CompletionsCost(Answer):
    """What tracking completions adds (in needed_per_minute already)."""

    accounts: int = Field(description="the config's accounts tracking them")
    users_polled: int = Field(description="their users polled one by one")
    per_minute: float = Field(description="the requests a minute they add")


class Budget(Answer):
    allowed_per_minute: float = Field(description="97% of the key's budget")
    needed_per_minute: float
    budget_per_minute: int
    fits: bool
    effective_interval_seconds: Intervals
    configured_interval_seconds: Intervals
    users: UsersByStrategy
    accounts: AccountsByStrategy
    completions: CompletionsCost
    adaptive: AdaptiveBounds | None


# -- what the API takes ------------------------------------------------------------------


class Request(BaseModel):
    """A request body: each field of its type, none coerced (fields it does not name are
    ignored)."""

    model_config = ConfigDict(strict=True)


def is_text(value: object) -> TypeGuard[str]:
    """A non-empty string that UTF-8 can encode: what a request may name anything by (a
    body's Text, a query's or path's parameter). JSON's `\ud800` escape gives a lone
    surrogate, which no Redis key or log line encodes."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(value: str) -> str:
    if not is_text(value):  # Field(min_length=1) has refused the empty string already
        raise PydanticCustomError("unicode", "must be valid Unicode")
    return value


# a non-empty string of valid Unicode
Text = Annotated[str, Field(min_length=1), AfterValidator(_text)]


class UserRef(Request):
    account_id: Text
    user_id: Text


class NewUser(Request):
    """A user to track: of an account of the config, with an id a request can name."""

    account_id: Text = Field(description="a configured account")
    user_id: Annotated[Text, WithJsonSchema(USER_ID_SCHEMA)]


class Replay(Request):
    endpoint: Text
    ids: list[Text] | None = Field(default=None, description="none: all its dead letters")


# a whole number as a request spells it (epoch milliseconds, a limit): up to 16 digits
DIGITS = re.compile(r"^[0-9]{1,16}$")
# epoch ms of 0001-01-01 and 9999-12-31: what an ISO 8601 instant can name
_EARLIEST_MS, _LATEST_MS = -62135596800000, 253402300799999


def instant_ms(value: object) -> int:
    """Epoch milliseconds (an integer, or a string of digits) or an ISO 8601 instant
    (without an offset: UTC); ValueError says what is wrong with anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str) and DIGITS.match(value):
        ms = int(value)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                "must be epoch milliseconds or an ISO 8601 instant (2026-11-28T06:00:00Z)"
            ) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        ms = int(moment.timestamp() * 1000)
    else:
        raise ValueError("must be epoch milliseconds or an ISO 8601 instant")
    if not _EARLIEST_MS <= ms <= _LATEST_MS:
        raise ValueError("is out of range")
    return ms


def _instant(value: object) -> int:
    try:
        return instant_ms(value)
    except ValueError as e:
        raise PydanticCustomError("instant", str(e)) from None


# taken as epoch milliseconds or an ISO 8601 instant, held as epoch milliseconds
Instant = Annotated[
    int,
    BeforeValidator(_instant),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "description": "epoch milliseconds"},
                {"type": "string", "description": "epoch milliseconds, or an ISO 8601 instant"},
            ]
        }
    ),
]


class Redeliver(Request):
    since: Instant
    until: Instant | None = Field(default=None, description="default: now")
    outcome: RedeliverOutcome

    @field_validator("until", mode="before")
    @classmethod
    def _empty_is_now(cls, value: object) -> object:
        return None if value == "" else value
