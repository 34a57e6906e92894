"""Settings: the YAML config file, `${VAR}` interpolation, durations, validation.

Loaded once at start; every duration becomes float seconds here and nowhere else.
"""

from __future__ import annotations

import base64
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from service.changes.events import EVENT_TYPES
from service.errors import ConfigError
from service.redis_url import is_sentinel, parse_sentinel_url, url_secrets
from service.resources import DEFAULT_TRACK, Resource, tracked
from service.user_ids import USER_ID_SCHEMA, user_id_problem

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

DAY = 86400.0
# Every duration has a finite range: `.nan`, `.inf` or 1e308 passed once and then stopped the
# service silently (no poll ever due, a timeout that never ends).
MAX_DURATION = 30 * DAY
MAX_TIMEOUT = 3600.0  # one request or delivery attempt; 0 is not "no timeout"
MIN_POLL_INTERVAL = 0.1  # shorter than a poll itself takes means "all the time"
MAX_DISABLE_AFTER = 365 * DAY  # an operator who never wants an endpoint disabled: a year


def parse_duration(value: Any) -> float:
    """`500ms`, `30s`, `5m`, `2h`, `1d` or a plain number of seconds → float seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 500ms, 30s, 5m")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION.match(value)):
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        else:
            raise ValueError(
                f"invalid duration {value!r}: use seconds or e.g. 500ms, 30s, 5m, 2h, 1d"
            )
    except OverflowError:  # an integer of hundreds of digits
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _human(seconds: float) -> str:
    """Seconds in the largest unit that holds them whole: 0.1 → 100ms, 2592000 → 30d."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


def _within(low: float, high: float, *, above: bool = False) -> AfterValidator:
    """A duration between `low` (excluded when `above`) and `high` seconds."""

    def check(seconds: float) -> float:
        if seconds < low or (above and seconds == low):
            raise ValueError(f"must be {'more than' if above else 'at least'} {_human(low)}")
        if seconds > high:
            raise ValueError(f"must be at most {_human(high)}")
        return seconds

    return AfterValidator(check)


def _duration_schema(low: float, high: float, *, above: bool = False) -> WithJsonSchema:
    number: dict[str, Any] = {"type": "number", "maximum": high}
    number["exclusiveMinimum" if above else "minimum"] = low
    low_text = f"more than {_human(low)}" if above else f"at least {_human(low)}"
    return WithJsonSchema(
        {
            "anyOf": [
                number,
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": (
                "seconds, or a string such as 500ms, 30s, 5m, 2h, 1d; "
                f"{low_text}, at most {_human(high)}"
            ),
        }
    )


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(0, MAX_DURATION),
    _duration_schema(0, MAX_DURATION),
]
Timeout = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(0, MAX_TIMEOUT, above=True),
    _duration_schema(0, MAX_TIMEOUT, above=True),
]
PollInterval = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(MIN_POLL_INTERVAL, MAX_DURATION),
    _duration_schema(MIN_POLL_INTERVAL, MAX_DURATION),
]
LongDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(0, MAX_DISABLE_AFTER),
    _duration_schema(0, MAX_DISABLE_AFTER),
]
# Counts: what one process runs at once is a task (and its buffers) each; a million of them
# took 1.5 GB in 20 s and ignored SIGTERM.
MAX_CONCURRENCY = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackOneSettings(_Strict):
    base_url: str = "https://api.stackone.com"
    api_key: SecretStr
    max_requests_per_minute: int = Field(1000, ge=1, le=1_000_000)
    page_size: int = Field(100, ge=1, le=100)
    request_timeout: Timeout = 60.0
    filter_style: Literal["deep_object", "form"] = "deep_object"
    # A runaway `next` chain (a provider looping its cursor) fails the poll after this many pages.
    max_pages: int = Field(1000, ge=1, le=100_000)
    # The same for a whole account's listing (a feed's full read: 20,000 users × 5
    # assignments are 1,000 pages of 100 already). 10,000 pages are a million assignments and
    # about ten minutes of a 1000/min key; an endless chain ran 100 minutes at 100,000.
    max_account_pages: int = Field(10_000, ge=1, le=10_000_000)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


TrackedName = Literal["assignments", "completions"]  # service/resources.py's names


def _default_track() -> list[TrackedName]:
    return [DEFAULT_TRACK]


class AccountDefaults(_Strict):
    """How one account is read: the config's accounts each name theirs, and
    `account_discovery.defaults` is every discovered account's."""

    # a list of user ids, or "all": every user the account's user listing names; the ids
    # follow service/user_ids.py (checked in Settings, which names the item at fault)
    users: Annotated[
        list[str] | Literal["all"],
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "array", "items": USER_ID_SCHEMA, "uniqueItems": True},
                    {"const": "all", "type": "string"},
                ]
            }
        ),
    ] = Field(default_factory=list)
    # per_user: each user's assignments read on its own; account: the account's change feed;
    # auto: the feed, falling back to per_user where the upstream cannot serve it
    strategy: Literal["per_user", "account", "auto"] = "per_user"
    # the records tracked for each user, each read with the account's strategy (a second
    # feed per account, a second request per user poll): docs/accounts.md, Completions
    track: list[TrackedName] = Field(default_factory=_default_track, min_length=1)

    @field_validator("track")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(value) != len(set(value)):
            raise ValueError("a resource is listed twice")
        return value

    @property
    def resources(self) -> tuple[Resource, ...]:
        """What `track` names, in the order a read takes them."""
        return tracked(self.track)

    @property
    def all_users(self) -> bool:
        return self.users == "all"

    @property
    def listed_users(self) -> list[str]:
        """The user ids the config names (none for `users: all`)."""
        return [] if isinstance(self.users, str) else self.users

    @property
    def uses_feed(self) -> bool:
        return self.strategy != "per_user"


class AccountSettings(AccountDefaults):
    account_id: str = Field(min_length=1)

    @classmethod
    def discovered(cls, account_id: str, defaults: AccountDefaults) -> AccountSettings:
        """A discovered account, read as `account_discovery.defaults` says."""
        return cls(account_id=account_id, **defaults.model_dump())


def _discovered_defaults() -> AccountDefaults:
    # a discovered account's users are not known before it is read: list them all
    return AccountDefaults(users="all", strategy="auto")


class AccountDiscoverySettings(_Strict):
    """Every linked account the key reaches (`GET /accounts`), tracked without a restart."""

    enabled: bool = False
    # how often the linked accounts are listed again
    interval: PollInterval = 300.0
    # only the accounts of these providers (e.g. docebo); none: every provider
    providers: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    # only the accounts of these customers (`origin_owner_id`); none: every customer
    origin_owner_ids: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    defaults: AccountDefaults = Field(default_factory=_discovered_defaults)

    @field_validator("defaults")
    @classmethod
    def _no_listed_users(cls, value: AccountDefaults) -> AccountDefaults:
        if value.listed_users:
            raise ValueError("users: a discovered account's users are `all` or none, not ids")
        return value


class PollingSettings(_Strict):
    interval: PollInterval = 300.0
    # strategy account/auto: how often each account's change feed is read
    account_interval: PollInterval = 10.0
    # users: all: how often the account's user listing is read again
    discovery_interval: PollInterval = 900.0
    overlap: Duration = 60.0
    full_resync_interval: Duration = 86400.0
    emit_on_first_sync: bool = False
    # per_user: busy users polled more often and idle ones less, in the same budget
    adaptive: bool = False
    # adaptive: no user polled more often than this
    min_interval: PollInterval = 30.0
    # adaptive: no account's feed read less often than this (none: 10 × account_interval)
    max_account_interval: PollInterval | None = None
    # How many users one process polls at the same time.
    concurrency: int = Field(16, ge=1, le=MAX_CONCURRENCY)

    @model_validator(mode="after")
    def _account_bounds(self) -> PollingSettings:
        if self.max_account_interval is not None and (
            self.max_account_interval < self.account_interval
        ):
            raise ValueError("max_account_interval: must be at least account_interval")
        return self

    @property
    def slowest_account_interval(self) -> float:
        """adaptive: the longest an account's feed waits between reads."""
        return self.max_account_interval or 10 * self.account_interval


def _secret_list(value: Any) -> Any:
    return [value] if isinstance(value, str | SecretStr) else value


class EndpointSettings(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    secret: Annotated[
        list[SecretStr],
        BeforeValidator(_secret_list),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "pattern": "^whsec_"},
                    {
                        "type": "array",
                        "items": {"type": "string", "pattern": "^whsec_"},
                        "minItems": 1,
                    },
                ],
                "description": "whsec_<base64>; a list signs with each secret (rotation)",
            }
        ),
    ] = Field(min_length=1)
    events: list[str] | None = None
    accounts: list[str] | None = None
    max_per_second: float | None = Field(None, ge=0.01, le=100_000, allow_inf_nan=False)
    timeout: Timeout = 15.0
    # Deliveries to this endpoint in flight at once, per process.
    concurrency: int = Field(8, ge=1, le=MAX_CONCURRENCY)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            text = secret.get_secret_value()
            try:
                key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
            except ValueError:
                key = b""
            if not text.startswith("whsec_") or len(key) < 16:
                raise ValueError("a webhook secret is whsec_<base64 of at least 16 bytes>")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: list[str] | None) -> list[str] | None:
        for event_type in value or []:
            if event_type not in EVENT_TYPES:
                raise ValueError(f"unknown event type {event_type!r}")
        return value

    def wants(self, event_type: str, account_id: str) -> bool:
        """True when this endpoint subscribes to that event type from that account."""
        return (self.events is None or event_type in self.events) and (
            self.accounts is None or account_id in self.accounts
        )


# The delivery log keeps each event for at least a minute (less is no log at all) and at most
# a year; an endpoint's share of it is capped by a count (what bounds its memory).
LogRetention = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(60.0, MAX_DISABLE_AFTER),
    _duration_schema(60.0, MAX_DISABLE_AFTER),
]
MAX_LOG_PER_ENDPOINT = 10_000_000


class DeliverySettings(_Strict):
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        max_length=100,
    )
    disable_after: LongDuration = 5 * 86400.0
    allow_http: bool = False
    allow_private_addresses: bool = False
    # The delivery log (docs/architecture.md): every event and attempt kept this long,
    log_retention: LogRetention = 7 * DAY
    # and at most this many of each endpoint's most recent events.
    log_max_per_endpoint: int = Field(50_000, ge=1, le=MAX_LOG_PER_ENDPOINT)


class HttpSettings(_Strict):
    listen: str = "0.0.0.0:8080"
    admin_token: SecretStr | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:8080")
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LogSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


# How often finished spans are sent (the batch processor's delay): short enough for a trace to
# show up while it is looked for, long enough to send spans in batches.
ExportInterval = Annotated[
    float,
    BeforeValidator(parse_duration),
    _within(0.01, 300.0),
    _duration_schema(0.01, 300.0),
]
# An HTTP header's name (RFC 9110 token); a value holds no control characters (CR/LF would
# split the request).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


class TracingSettings(_Strict):
    # the collector's OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; none (or
    # empty, as `${VAR:-}` gives) leaves tracing off
    endpoint: str | None = None
    service_name: str = Field("lms-webhooks", min_length=1, max_length=256)
    # the share of traces kept, decided where a trace starts (a read, or a delivery of an
    # event queued without one); a delivery follows its commit's decision
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    # sent with every export (a collector's or a vendor's API key): secrets, never logged
    headers: dict[str, SecretStr] = Field(default_factory=dict, max_length=64)
    timeout: Timeout = 10.0  # one export, its retries included
    export_interval: ExportInterval = 5.0

    @field_validator("endpoint", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        problem = "must be an http:// or https:// URL, e.g. http://collector:4318/v1/traces"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not one
        except ValueError:
            raise ValueError(problem) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(problem)
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if not _HEADER_VALUE.fullmatch(secret.get_secret_value()):
                # the value itself is never quoted: it may be a key
                raise ValueError(f"{name}: a header value cannot hold control characters")
        return value

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


class Settings(_Strict):
    # repr=False: the URL may hold Redis' password
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    stackone: StackOneSettings
    accounts: list[AccountSettings] = Field(default_factory=list)
    account_discovery: AccountDiscoverySettings = AccountDiscoverySettings()
    polling: PollingSettings = PollingSettings()
    endpoints: list[EndpointSettings] = Field(default_factory=list)
    delivery: DeliverySettings = DeliverySettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if is_sentinel(value):
            parse_sentinel_url(value)  # its ValueError never quotes the URL (a password)
        elif not value.startswith(("redis://", "rediss://", "unix://", "memory://")):
            raise ValueError("must be redis://, rediss://, unix://, redis+sentinel:// or memory://")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        seen: set[str] = set()
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.id in seen:
                raise ValueError(f"endpoints.{index}.id: duplicate endpoint id {endpoint.id!r}")
            seen.add(endpoint.id)
            if endpoint.url.startswith("http://") and not self.delivery.allow_http:
                raise ValueError(
                    f"endpoints.{index}.url: plain http:// needs delivery.allow_http: true"
                )
        accounts = [a.account_id for a in self.accounts]
        if len(accounts) != len(set(accounts)):
            raise ValueError("accounts: an account_id appears twice")
        for index, account in enumerate(self.accounts):
            _check_user_ids(f"accounts.{index}.users", account.listed_users)
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        values = [self.stackone.api_key.get_secret_value()]
        values += url_secrets(self.redis_url)
        values += [s.get_secret_value() for e in self.endpoints for s in e.secret]
        if self.http.admin_token:
            values.append(self.http.admin_token.get_secret_value())
        values += [v.get_secret_value() for v in self.tracing.headers.values()]
        return values

    def account(self, account_id: str) -> AccountSettings | None:
        return next((a for a in self.accounts if a.account_id == account_id), None)

    def endpoint(self, endpoint_id: str) -> EndpointSettings | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)


def _check_user_ids(path: str, user_ids: list[str]) -> None:
    """Each id valid and listed once: `users: [u1, u1, ""]` was three users."""
    seen: set[str] = set()
    for index, user_id in enumerate(user_ids):
        problem = user_id_problem(user_id)
        if problem is None and user_id in seen:
            problem = "a duplicate: this user id is listed before"
        if problem is not None:
            raise ValueError(f"{path}.{index}: {problem}")
        seen.add(user_id)


def settings_json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (checked in as config/schema.json; `make schema`)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lms-webhooks config"
    return schema


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class Substitutions:
    """The environment values of one load and the placeholder tokens standing for them.

    Each token carries a random nonce drawn for this load, so no text in a config file can
    name one: a fixed token (`__lms_webhooks_env_0__`) let plain text pull in the first
    variable's value, the API key.
    """

    values: list[str] = field(default_factory=list)
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    def token(self, index: int) -> str:
        return f"__lms_webhooks_env_{self.nonce}_{index}__"

    def put_back(self, text: str) -> str:
        if self.nonce not in text:  # the common case, without a regex
            return text
        return re.sub(
            rf"__lms_webhooks_env_{self.nonce}_(\d+)__",
            lambda m: self.values[int(m.group(1))],
            text,
        )


def interpolate(text: str, env: Mapping[str, str] | None = None) -> tuple[str, Substitutions]:
    """Resolve `${VAR}` and `${VAR:-default}` before parsing, as placeholder tokens.

    The values are put back into the parsed strings (`fill`), never into the YAML text: a
    value holding `: `, `#` or quotes cannot change the document's structure, and a YAML
    error cannot quote a secret. A variable without default that is unset or empty is an
    error (`${VAR:-}` says that empty is meant).
    """
    environ = os.environ if env is None else env
    found = Substitutions()

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if not value:
            if default is None:
                problem = "is not set" if value is None else "is empty"
                raise ConfigError(name, f"environment variable {problem} (use ${{VAR:-default}})")
            value = default
        found.values.append(value)
        return found.token(len(found.values) - 1)

    # whole-line comments are left alone, so documenting `${VAR}` in a comment is harmless
    text = "".join(
        line if line.lstrip().startswith("#") else _VAR.sub(replace, line)
        for line in text.splitlines(keepends=True)
    )
    return text, found


def fill(data: Any, values: Substitutions, at: tuple[str, ...] = ()) -> Any:
    """Put the environment values into the parsed document's strings.

    A value stays a string (an account id "007" stays "007"); numeric and boolean settings
    accept their string forms ("100", "true") when the Settings model validates them. Two
    keys that are equal only once filled in (`${A}: 1` and `${B}: 2`) are a duplicate key.
    """
    if isinstance(data, str):
        return values.put_back(data)
    if isinstance(data, dict):
        filled: dict[Any, Any] = {}
        for key, value in data.items():
            name = fill(key, values)
            if name in filled:
                raise ConfigError(_location((*at, str(name))), "duplicate key")
            filled[name] = fill(value, values, (*at, str(name)))
        return filled
    if isinstance(data, list):
        return [fill(v, values, (*at, str(n))) for n, v in enumerate(data)]
    return data


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_settings(data: Any) -> Settings:
    """Validate parsed YAML; the first problem becomes a ConfigError naming its key path."""
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config must be a YAML mapping")
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_input=False, include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        path = _location(first["loc"])
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        if path == "(top level)" and ": " in message:  # model-level checks name their own path
            path, message = message.split(": ", 1)
        # not chained: a ValidationError's repr carries input values, secrets among them
        raise ConfigError(path, message) from None


# A config is a few kilobytes; 100,000 tracked users listed inline are about 2.5 MB. The
# pure-Python YAML parser reads about 0.4 MB a second (a 49 MB file ran for minutes), so
# larger files are refused unread.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# A config is nested 5 levels deep; the composer recurses per level (500 overflowed it).
MAX_YAML_DEPTH = 32
# An alias shares its node, but filling in `${VAR}`s and validating copy it once per alias:
# nine lines of aliases are 10^9 nodes. What aliases add is bounded by about what the largest
# accepted file holds written out (4 MiB of `[a,a,…]` is 2 million nodes), so sharing even a
# 100,000-user list among accounts is fine and no alias costs more than a big file does.
MAX_ALIAS_NODES = 1_000_000


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without what a config never needs and a hostile or broken file abuses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> its anchor's name, for errors about what its aliases expand to
        self.anchor_names: dict[int, str] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.check_event()  # reads the next event into current_event
        event = self.current_event
        if self._depth >= MAX_YAML_DEPTH:
            raise ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None and event.anchor is not None:
            self.anchor_names.setdefault(id(node), event.anchor)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError):
            # PyYAML lets e.g. `2024-13-45` or `!!int x` escape as plain errors, and their
            # messages quote the value
            raise ConstructorError(
                None,
                None,
                "a value YAML cannot read (an impossible date or number?)",
                node.start_mark,
            ) from None


class _DocumentCheck:
    """One walk of the composed document before anything copies it: duplicate keys, and
    what aliases expand to, each shared node measured once (where it is written, which the
    walk, in document order, always meets before any alias of it)."""

    def __init__(self, values: Substitutions, anchor_names: dict[int, str]) -> None:
        self._values = values
        self._anchor_names = anchor_names
        self._measured: dict[int, tuple[int, int]] = {}  # id(node): expanded (nodes, height)
        self._open: set[int] = set()  # the nodes the walk is inside of
        self._added = 0  # nodes the aliases met so far add

    def walk(self, node: Node, at: tuple[str, ...] = ()) -> tuple[int, int]:
        """The node's expanded (node count, height); raises ConfigError on what is refused."""
        measured = self._measured.get(id(node))
        if measured is not None:
            self._alias(node, at, measured)
            return measured
        if id(node) in self._open:
            raise ConfigError(
                _location(at), f"an alias inside the value it names ({self._of(node)})"
            )
        self._open.add(id(node))
        nodes, height = 1, 0
        for child, path in self._children(node, at):
            size, child_height = self.walk(child, path)
            nodes, height = nodes + size, max(height, child_height)
        self._open.discard(id(node))
        self._measured[id(node)] = (nodes, height + 1)
        return nodes, height + 1

    def _alias(self, node: Node, at: tuple[str, ...], measured: tuple[int, int]) -> None:
        self._added += measured[0]
        if self._added > MAX_ALIAS_NODES:
            raise ConfigError(
                _location(at),
                f"aliases expand the document by more than {MAX_ALIAS_NODES:,} values"
                f" ({self._of(node)})",
            )
        if len(at) + measured[1] > MAX_YAML_DEPTH:
            raise ConfigError(
                _location(at),
                f"nested deeper than {MAX_YAML_DEPTH} levels through {self._of(node)}",
            )

    def _of(self, node: Node) -> str:
        name = self._anchor_names.get(id(node), "?")
        return f"*{name}, anchored on line {node.start_mark.line + 1}"

    def _children(self, node: Node, at: tuple[str, ...]) -> list[tuple[Node, tuple[str, ...]]]:
        """The node's keys and values with their key paths; two equal keys are an error
        (PyYAML keeps the last without a word: one of them is a mistake)."""
        if isinstance(node, SequenceNode):
            return [(item, (*at, str(index))) for index, item in enumerate(node.value)]
        if not isinstance(node, MappingNode):
            return []
        children: list[tuple[Node, tuple[str, ...]]] = []
        seen: set[tuple[str, Any]] = set()
        for key, value in node.value:
            name = self._values.put_back(str(key.value)) if isinstance(key, ScalarNode) else "?"
            if isinstance(key, ScalarNode):
                if (key.tag, key.value) in seen:
                    line = key.start_mark.line + 1
                    raise ConfigError(_location((*at, name)), f"duplicate key (line {line})")
                seen.add((key.tag, key.value))
            children += [(key, (*at, name)), (value, (*at, name))]
        return children


def _parse_yaml(text: str, values: Substitutions, source: str) -> Any:
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _DocumentCheck(values, loader.anchor_names).walk(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse"
        raise ConfigError(source, f"invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read config file: {e.strerror}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), f"the file is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), f"the file is not UTF-8 (byte {e.start})") from None
    text, values = interpolate(text, env)
    return parse_settings(fill(_parse_yaml(text, values, str(path)), values))
