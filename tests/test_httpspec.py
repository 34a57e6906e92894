"""One vocabulary for HTTP: status classes and Retry-After, as both sides read them."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from service.errors import UpstreamError, UpstreamRateLimited, UpstreamRejected, UpstreamUnavailable
from service.httpspec import StatusClass, retry_after_seconds, status_class
from service.upstream.client import DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER, error_for_status

NOW = 1_800_000_000.0


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, StatusClass.SUCCESS),
        (204, StatusClass.SUCCESS),
        (301, StatusClass.REDIRECT),
        (408, StatusClass.RATE_LIMITED),
        (429, StatusClass.RATE_LIMITED),
        (401, StatusClass.ACCOUNT_REJECTED),
        (403, StatusClass.ACCOUNT_REJECTED),
        (412, StatusClass.ACCOUNT_REJECTED),
        (404, StatusClass.NOT_FOUND),
        (410, StatusClass.GONE),
        (400, StatusClass.CLIENT_ERROR),
        (422, StatusClass.CLIENT_ERROR),
        (500, StatusClass.SERVER_ERROR),
        (503, StatusClass.SERVER_ERROR),
        (199, StatusClass.SERVER_ERROR),  # nothing a server should answer
        (600, StatusClass.SERVER_ERROR),
    ],
)
def test_status_classes(status: int, kind: StatusClass) -> None:
    assert status_class(status) is kind


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        # float() reads these; RFC 9110's delta-seconds is ASCII digits only
        ("1_0", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE
        ("1e3", None),
        ("0x10", None),
        ("9" * 400, 600.0),  # readable, only long: the cap
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("999999", 600.0),  # clamped to the cap
        (http_date(4), 4.0),  # RFC 9110: an HTTP date
        (http_date(-30), 0.0),  # already past
        (http_date(86400), 600.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
    ],
)
def test_retry_after_in_both_forms(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header, now=NOW, cap=600.0) == seconds


def test_upstream_errors_follow_the_status_classes() -> None:
    assert error_for_status(200, None, NOW) is None
    limited = error_for_status(429, http_date(3), NOW)
    assert isinstance(limited, UpstreamRateLimited) and limited.retry_after == 3.0
    unreadable = error_for_status(408, "later", NOW)
    assert isinstance(unreadable, UpstreamRateLimited)
    assert unreadable.retry_after == DEFAULT_RETRY_AFTER
    capped = error_for_status(429, "86400", NOW)
    assert isinstance(capped, UpstreamRateLimited) and capped.retry_after == MAX_RETRY_AFTER
    for status in (401, 403, 404, 412):
        assert isinstance(error_for_status(status, None, NOW), UpstreamRejected)
    assert isinstance(error_for_status(502, None, NOW), UpstreamUnavailable)
    other = error_for_status(400, None, NOW)
    assert type(other) is UpstreamError and other.status == 400
