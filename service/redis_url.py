"""`redis_url` forms beyond redis-py's own: `redis+sentinel://` (a primary found through Redis
Sentinel, followed across failovers), and the secrets any form carries, for redaction.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]

`host:port` pairs are the sentinels (port 26379 when left out), `service` the name the
sentinels monitor (`sentinel monitor <service> ...`), `db` the database (0). The user and
password are the Redis primary's (and its replicas'). Options: `sentinel_username` and
`sentinel_password` when the sentinels themselves require a login (`requirepass` in
sentinel.conf); none by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_OPTIONS = ("sentinel_username", "sentinel_password")
USAGE = f"{SENTINEL_SCHEME}://[[user]:password@]host:port[,host:port...]/service_name[/db]"


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel(url: str) -> bool:
    return url.startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The target of a `redis+sentinel://` URL. A ValueError says what is wrong without
    quoting the URL (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    _, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"no sentinel host: use {USAGE}")
    sentinels = [_host_port(item) for item in hosts.split(",")]
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0] or len(path) > 2:
        raise ValueError(f"the service name (and db) after the hosts: use {USAGE}")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError("the db after the service name must be a number")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}: only {', '.join(_OPTIONS)}")
    username = unquote(parts.username) if at and parts.username else None
    password = unquote(parts.password) if at and parts.password is not None else None
    return SentinelTarget(
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username", [None])[-1] or None,
        sentinel_password=query.get("sentinel_password", [None])[-1] or None,
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [ipv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"an empty sentinel host: use {USAGE}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError("a sentinel's port must be a number from 1 to 65535")
    return host, int(port) if port else SENTINEL_PORT


def url_secrets(url: str) -> list[str]:
    """The passwords a Redis URL holds (of Redis, of the sentinels), for the log redactor."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    # as written and decoded: either may show up in a message
    found = [parts.password, unquote(parts.password)] if parts.password else []
    for name in ("password", "sentinel_password"):
        found += [v for v in parse_qs(parts.query).get(name, []) if v]
    return found
