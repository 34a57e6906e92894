"""What every /ui request goes through: the session, CSRF and origin checks on changes,
the security headers, and HTML error pages (the rest of the API answers errors in JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import aiohttp_jinja2
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from service.api.common import BadRequest, Handler, ops
from service.api.console.session import Session, Sessions
from service.errors import InvalidInput, NotFound

log = structlog.get_logger("console")

PREFIX = "/ui"
LOGIN = "/ui/login"
STATIC = "/ui/static/"
SESSION_COOKIE = "lw_console"
FLASH_COOKIE = "lw_console_flash"
SESSIONS_KEY: web.AppKey[Sessions] = web.AppKey("console_sessions", Sessions)
# the request's session as the guard found it; aiohttp 3.14 brought typed request keys
# (and warns about plain ones), older releases take the name
_SESSION: web.RequestKey[Session | None] = getattr(web, "RequestKey", lambda name, _: name)(
    "console_session", object
)

# No inline script or style anywhere: what an injected tag carries never runs or styles.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # pages show live state and are for the signed-in operator only: no cache keeps them
    "Cache-Control": "no-store",
}


class Forbidden(Exception):
    """A change refused (no CSRF token, another site's origin): 403 with the reason."""


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def session_of(request: web.Request) -> Session | None:
    """The request's session as the guard found it: signed, unexpired and not signed out."""
    return request.get(_SESSION)


async def _find_session(request: web.Request) -> Session | None:
    """The cookie's session, unless it was signed out (on any replica): one HMAC, and one
    Redis read when there is a signed cookie."""
    request[_SESSION] = None  # an error page for a Redis error below shows no session
    session = request.app[SESSIONS_KEY].verify(request.cookies.get(SESSION_COOKIE))
    if session is not None and await ops(request).stores.signed_out.is_signed_out(session.nonce):
        session = None
    request[_SESSION] = session
    return session


def over_https(request: web.Request) -> bool:
    """Behind a TLS-terminating proxy the request arrives over http; the proxy's
    X-Forwarded-Proto says so. Trusting it can only add `Secure` to the cookie."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def text_field(form: Mapping[str, object], name: str) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise BadRequest(f"`{name}` must be text")
    return value


def _same_origin(request: web.Request) -> None:
    """A change comes from this console's own pages: when the browser names where the
    request comes from (Origin, else Referer), that is this host. SameSite=Strict already
    keeps the cookie off other sites' requests; this holds even where it is not honoured."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return
    hosts = {request.host, request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()}
    netloc = urlsplit(source).netloc if source != "null" else ""
    if not netloc or netloc not in hosts:
        raise Forbidden("the request comes from another origin")


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    sessions = request.app[SESSIONS_KEY]
    path = request.path
    if path.startswith(STATIC) and request.method in ("GET", "HEAD"):
        return await handler(request)  # the same for everyone: no session to look up
    session = await _find_session(request)
    if request.method not in ("GET", "HEAD"):
        _same_origin(request)
        if path != LOGIN:
            if session is None:
                raise web.HTTPSeeOther(LOGIN)
            form = await request.post()  # kept by aiohttp: the handler reads it again
            if not sessions.csrf_matches(session, text_field(form, "csrf")):
                raise Forbidden("the form's CSRF token is missing or stale: reload the page")
    elif session is None and path != LOGIN:
        raise web.HTTPSeeOther(LOGIN)
    return await handler(request)


def _error_page(request: web.Request, status: int, message: str) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "error.html",
        request,
        {"status": status, "message": message, "signed_in": session_of(request) is not None},
        status=status,
    )


@web.middleware
async def console_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_console(request.path):
        return await handler(request)
    try:
        response = await _checked(request, handler)
    except web.HTTPException as e:
        if e.status < 400:  # a redirect: it carries the headers too
            e.headers.update(HEADERS)
            raise
        response = _error_page(request, e.status, e.reason)
    except Forbidden as e:
        log.warning("console_change_refused", path=request.path, reason=str(e))
        response = _error_page(request, 403, str(e))
    except (BadRequest, InvalidInput) as e:
        response = _error_page(request, 400, str(e))
    except NotFound as e:
        response = _error_page(request, 404, str(e))
    except RedisError:
        response = _error_page(request, 503, "Redis is not answering; try again shortly.")
    except Exception:
        log.exception("console_handler_failed", method=request.method, path=request.path)
        response = _error_page(request, 500, "Something went wrong; the log has the details.")
    response.headers.update(HEADERS)
    return response
