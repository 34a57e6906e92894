"""What HTTP means to this service, in one place: the User-Agent it sends, the classes of
status codes both sides act on, and the one Retry-After parser.

Pure: `now` is passed in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum

from service import __version__

USER_AGENT = f"lms-webhooks/{__version__}"


class StatusClass(Enum):
    SUCCESS = "success"  # 2xx
    REDIRECT = "redirect"  # 3xx: never followed
    RATE_LIMITED = "rate_limited"  # 408, 429: slow down, for as long as Retry-After says
    ACCOUNT_REJECTED = "account_rejected"  # 401 key, 403 account, 412 integration unusable
    NOT_FOUND = "not_found"  # 404
    GONE = "gone"  # 410: never coming back
    CLIENT_ERROR = "client_error"  # any other 4xx: this request is wrong
    SERVER_ERROR = "server_error"  # 5xx, and anything outside 2xx-5xx


_EXACT = {
    408: StatusClass.RATE_LIMITED,
    429: StatusClass.RATE_LIMITED,
    401: StatusClass.ACCOUNT_REJECTED,
    403: StatusClass.ACCOUNT_REJECTED,
    412: StatusClass.ACCOUNT_REJECTED,
    404: StatusClass.NOT_FOUND,
    410: StatusClass.GONE,
}


def status_class(status: int) -> StatusClass:
    if 200 <= status < 300:
        return StatusClass.SUCCESS
    if 300 <= status < 400:
        return StatusClass.REDIRECT
    if (exact := _EXACT.get(status)) is not None:
        return exact
    return StatusClass.CLIENT_ERROR if 400 <= status < 500 else StatusClass.SERVER_ERROR


# A webhook receiver's Retry-After is honoured on these (RFC 9110 defines it for 503 and
# 3xx, RFC 6585 for 429); the upstream API sends it on 408 and 429 (StatusClass.RATE_LIMITED).
RECEIVER_RETRY_AFTER = frozenset({429, 503})


# delta-seconds (RFC 9110: ASCII digits; a fraction or a minus sign read kindly). float()
# alone also takes "nan", "1e999", "1_0" and non-ASCII digits.
_DELTA_SECONDS = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")


def retry_after_seconds(value: str | None, *, now: float, cap: float) -> float | None:
    """A Retry-After header as seconds from `now`, clamped to [0, cap]; None when absent or
    unreadable. Both forms of RFC 9110 §10.2.3: delta-seconds, or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.match(text):
        seconds = float(text)
    else:
        moment = http_date(text)
        if moment is None:
            return None
        seconds = moment.timestamp() - now
    return min(max(seconds, 0.0), cap)  # a delta of 400 digits is inf: the cap


def http_date(value: str | None) -> datetime | None:
    """An HTTP date (RFC 9110 §5.6.7: `Date`, `Retry-After`), or None when absent or
    unreadable."""
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC by RFC 5322
        moment = moment.replace(tzinfo=UTC)
    return moment
