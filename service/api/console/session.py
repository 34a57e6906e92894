"""Console sessions: a cookie holding an expiry and a nonce, signed with a key derived from
the admin token.

Any replica that has the admin token verifies any replica's cookie, so the console works
behind a load balancer without sticky sessions or a session store. Changing the admin token
ends every session at once. Signing out ends one: its nonce is the session's id, written to
Redis until the cookie would expire (store.console_sessions), and the console's guard
refuses a cookie whose id is there, so a copy of it stops working too.

The CSRF token is derived from the same cookie (its expiry and nonce), so it is bound to
the session: a token read from another session, or from before a sign-in, does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600
# a label per use, so a value signed for one purpose never verifies for another
_SESSION, _CSRF, _FLASH = b"session", b"csrf", b"flash"
MAX_FLASH_CHARS = 300


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    expires: int  # Unix seconds
    nonce: str
    cookie: str  # the cookie's whole value


class Sessions:
    def __init__(self, admin_token: str, clock: Callable[[], float]) -> None:
        # derived, not the token itself: a leaked signing key is not the admin API's key
        self._key = hmac.new(
            admin_token.encode(), b"lms-webhooks console session key v1", hashlib.sha256
        ).digest()
        self._token = admin_token.encode()
        self._clock = clock

    def _sign(self, purpose: bytes, text: str) -> str:
        return _b64(hmac.new(self._key, purpose + b"." + text.encode(), hashlib.sha256).digest())

    def token_matches(self, given: str) -> bool:
        """The admin token, compared in constant time (surrogates from a hostile form
        compare unequal instead of raising)."""
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token)

    def issue(self) -> Session:
        expires = int(self._clock()) + SESSION_SECONDS
        nonce = secrets.token_urlsafe(16)
        body = f"{expires}.{nonce}"
        return Session(expires, nonce, f"{body}.{self._sign(_SESSION, body)}")

    def verify(self, cookie: str | None) -> Session | None:
        """The session the cookie holds, or None: missing, malformed, forged or expired."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[0].isascii():
            return None
        expires_text, nonce, signature = parts
        expected = self._sign(_SESSION, f"{expires_text}.{nonce}")
        if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), expected.encode()):
            return None
        expires = int(expires_text)
        if expires <= self._clock():
            return None
        return Session(expires, nonce, cookie)

    def csrf_token(self, session: Session) -> str:
        return self._sign(_CSRF, f"{session.expires}.{session.nonce}")

    def csrf_matches(self, session: Session, given: str) -> bool:
        expected = self.csrf_token(session)
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())

    def seal_flash(self, session: Session, message: str) -> str:
        """A message for the next page (what a POST did), signed so that no one else can
        put words on the console's pages, and bound to the session it was made in."""
        body = _b64(message[:MAX_FLASH_CHARS].encode())
        return f"{body}.{self._sign(_FLASH, f'{session.nonce}.{body}')}"

    def open_flash(self, session: Session, sealed: str | None) -> str | None:
        if not sealed or len(sealed) > 8 * MAX_FLASH_CHARS:
            return None
        body, _, signature = sealed.partition(".")
        expected = self._sign(_FLASH, f"{session.nonce}.{body}")
        if not hmac.compare_digest(signature.encode("utf-8", "surrogatepass"), expected.encode()):
            return None
        try:
            return _unb64(body).decode()
        except (ValueError, UnicodeDecodeError):
            return None
