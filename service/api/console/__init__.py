"""The operator console at `/ui`: server-rendered pages over what Operations offers, signed
in with the admin token. Off (404) when no admin token is configured.

Jinja2 autoescapes everything: upstream records and receivers' answers are shown as text,
never as markup, and no template marks such data `|safe`. With no inline script allowed by
the Content-Security-Policy, markup that slipped through would still not run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from service.api.console.guard import SESSIONS_KEY, STATIC, console_guard
from service.api.console.session import Sessions
from service.api.console.views import add_console_routes, endpoint_url, event_url, events_url

__all__ = ["add_console", "console_guard"]

_HERE = Path(__file__).parent


def _moment(value: float | str | None) -> datetime | None:
    """Epoch milliseconds, or an ISO 8601 text (an event's own timestamp)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000, UTC)


def _when(value: float | str | None) -> str:
    moment = _moment(value)
    if moment is None:
        return "—" if value is None else str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{moment.microsecond // 1000:03d} UTC"


def _iso(value: float | str | None) -> str:
    moment = _moment(value)
    if moment is None:
        return ""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _span(seconds: float | None) -> str:
    """A duration the way a person says it: 850 ms, 12 s, 5 min, 2 h 30 min, 3 d."""
    if seconds is None:
        return "—"
    s = abs(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        hours, minutes = divmod(round(s / 60), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{s / 86400:.1f} d"


def _relative(value: float | str | None, now_ms: float) -> str:
    moment = _moment(value)
    if moment is None:
        return _when(value)
    delta = moment.timestamp() - now_ms / 1000
    if abs(delta) < 1:
        return "just now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


def add_console(app: web.Application, admin_token: str, clock: Callable[[], float]) -> None:
    """The console's routes, templates and static files on the API's app; `console_guard`
    must be among the app's middlewares."""
    app[SESSIONS_KEY] = Sessions(admin_token, clock)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page (and its test)
    )
    env.filters.update(when=_when, iso=_iso, span=_span, relative=_relative, pretty=_pretty)
    env.filters["percent"] = _percent
    # the pages' links, built from what they show (the models Operations answers)
    env.globals.update(endpoint_url=endpoint_url, event_url=event_url, events_url=events_url)
    add_console_routes(app)
    app.router.add_static(STATIC.rstrip("/"), _HERE / "static")
