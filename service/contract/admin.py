"""What the HTTP API answers and takes, as models: the API serializes every answer through
its model (`service/api/answers.py`), and `/openapi.json` describes them from the same
models, so a field the code adds without the model fails the request (and the suite)
instead of going undocumented.

Times: `..._ms` are epoch milliseconds, other instants epoch seconds (floats)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.endpoint_health import EndpointState
from service.user_ids import USER_ID_SCHEMA

Outcome = Literal["queued", "delivered", "dead"]  # an event's at one endpoint
RedeliverOutcome = Literal["delivered", "dead", "any"]
Cursor = Annotated[
    str | None, Field(description="pass it as `cursor` for the next page; null: the end")
]
Strategy = Literal["per_user", "account", "auto"]


class Answer(BaseModel):
    """Exactly these fields."""

    model_config = ConfigDict(extra="forbid")


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


class DeadLetter(BaseModel):
    """A dead-lettered event with what its attempts left behind."""

    model_config = ConfigDict(extra="allow")  # what a delivery recorded beside these

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


class User(Answer):
    account_id: str
    user_id: str
    source: Literal["config", "listing", "runtime"]
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


class AccountOwner(Answer):
    id: str | None
    name: str | None


class Account(Answer):
    account_id: str
    source: AccountSource
    state: AccountState = Field(
        description="the first that holds: not_lms, inactive (both not read), backed_off, "
        "paused, active"
    )
    strategy: Strategy
    strategy_in_force: Literal["per_user", "account"] | None = Field(description="null: not read")
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


class UserRef(BaseModel):
    account_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)


class NewUser(BaseModel):
    """A user to track: of an account of the config, with an id a request can name."""

    account_id: str = Field(min_length=1, description="a configured account")
    user_id: Annotated[str, WithJsonSchema(USER_ID_SCHEMA)]


class Replay(BaseModel):
    endpoint: str
    ids: list[str] | None = Field(default=None, description="none: all its dead letters")


# epoch milliseconds, or an ISO 8601 instant (without an offset: UTC)
Instant = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "description": "epoch milliseconds"},
                {"type": "string", "description": "epoch milliseconds, or an ISO 8601 instant"},
            ]
        }
    ),
]


class Redeliver(BaseModel):
    since: Instant
    until: Instant | None = Field(default=None, description="default: now")
    outcome: RedeliverOutcome
