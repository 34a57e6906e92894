"""Settings: the YAML config file, `${VAR}` interpolation, durations, validation.

Loaded once at start; every duration becomes float seconds here and nowhere else.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
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

from service.errors import ConfigError
from service.events import EVENT_TYPES
from service.redis_url import is_sentinel, parse_sentinel_url, url_secrets

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """`500ms`, `30s`, `5m`, `2h`, `1d` or a plain number of seconds → float seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 500ms, 30s, 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"invalid duration {value!r}: use seconds or e.g. 500ms, 30s, 5m, 2h, 1d")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"},
            ],
            "description": "seconds, or a string such as 500ms, 30s, 5m, 2h, 1d",
        }
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackOneSettings(_Strict):
    base_url: str = "https://api.stackone.com"
    api_key: SecretStr
    max_requests_per_minute: int = Field(1000, ge=1)
    page_size: int = Field(100, ge=1, le=100)
    request_timeout: Duration = 60.0
    filter_style: Literal["deep_object", "form"] = "deep_object"
    # A runaway `next` chain (a provider looping its cursor) fails the poll after this many pages.
    max_pages: int = Field(1000, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class AccountSettings(_Strict):
    account_id: str = Field(min_length=1)
    # a list of user ids, or "all": every user the account's user listing names
    users: list[str] | Literal["all"] = Field(default_factory=list)
    # per_user: each user's assignments read on its own; account: the account's change feed;
    # auto: the feed, falling back to per_user where the upstream cannot serve it
    strategy: Literal["per_user", "account", "auto"] = "per_user"

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


class PollingSettings(_Strict):
    interval: Duration = 300.0
    # strategy account/auto: how often each account's change feed is read
    account_interval: Duration = 10.0
    # users: all: how often the account's user listing is read again
    discovery_interval: Duration = 900.0
    overlap: Duration = 60.0
    full_resync_interval: Duration = 86400.0
    emit_on_first_sync: bool = False
    # How many users one process polls at the same time.
    concurrency: int = Field(16, ge=1)

    @field_validator("interval", "account_interval", "discovery_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


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
    max_per_second: float | None = Field(None, gt=0)
    timeout: Duration = 15.0
    # Deliveries to this endpoint in flight at once, per process.
    concurrency: int = Field(8, ge=1)

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


class DeliverySettings(_Strict):
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    disable_after: Duration = 5 * 86400.0
    allow_http: bool = False
    allow_private_addresses: bool = False


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


class Settings(_Strict):
    # repr=False: the URL may hold Redis' password
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    stackone: StackOneSettings
    accounts: list[AccountSettings] = Field(default_factory=list)
    polling: PollingSettings = PollingSettings()
    endpoints: list[EndpointSettings] = Field(default_factory=list)
    delivery: DeliverySettings = DeliverySettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()

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
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for the log redactor."""
        values = [self.stackone.api_key.get_secret_value()]
        values += url_secrets(self.redis_url)
        values += [s.get_secret_value() for e in self.endpoints for s in e.secret]
        if self.http.admin_token:
            values.append(self.http.admin_token.get_secret_value())
        return values

    def account(self, account_id: str) -> AccountSettings | None:
        return next((a for a in self.accounts if a.account_id == account_id), None)

    def endpoint(self, endpoint_id: str) -> EndpointSettings | None:
        return next((e for e in self.endpoints if e.id == endpoint_id), None)


def settings_json_schema() -> dict[str, Any]:
    """The config file's JSON Schema (checked in as config/schema.json; `make schema`)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lms-webhooks config"
    return schema


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_TOKEN = "__lms_webhooks_env_{}__"
_TOKENS = re.compile(r"__lms_webhooks_env_(\d+)__")


def interpolate(text: str, env: Mapping[str, str] | None = None) -> tuple[str, list[str]]:
    """Resolve `${VAR}` and `${VAR:-default}` before parsing, as placeholder tokens.

    The values are put back into the parsed strings (`fill`), never into the YAML text: a
    value holding `: `, `#` or quotes cannot change the document's structure, and a YAML
    error cannot quote a secret. An unset variable without default is an error.
    """
    environ = os.environ if env is None else env
    values: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(name, "environment variable is not set (use ${VAR:-default})")
            value = default
        values.append(value)
        return _TOKEN.format(len(values) - 1)

    # whole-line comments are left alone, so documenting `${VAR}` in a comment is harmless
    text = "".join(
        line if line.lstrip().startswith("#") else _VAR.sub(replace, line)
        for line in text.splitlines(keepends=True)
    )
    return text, values


def fill(data: Any, values: list[str]) -> Any:
    """Put the environment values into the parsed document's strings.

    A value stays a string (an account id "007" stays "007"); numeric and boolean settings
    accept their string forms ("100", "true") when the Settings model validates them.
    """
    if isinstance(data, str):
        return _TOKENS.sub(lambda m: values[int(m.group(1))], data)
    if isinstance(data, dict):
        return {fill(k, values): fill(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [fill(v, values) for v in data]
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


def load_settings(path: str | Path, env: dict[str, str] | None = None) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), f"cannot read config file: {e.strerror}") from e
    text, values = interpolate(text, env)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse"
        raise ConfigError(str(path), f"invalid YAML{where}: {problem}") from None
    return parse_settings(fill(data, values))
