"""Secrets never reach a log line, whether structlog's or a library's."""

from __future__ import annotations

import logging

import pytest
import structlog

from service.logs import REDACTED, configure_logging

SECRET = "whsec_dGhpcy1pcy1hLXZlcnktc2VjcmV0LWtleQ=="


def test_structlog_and_stdlib_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json", [SECRET, "sk_live_123456"])
    try:
        structlog.get_logger("t").warning(
            "event", detail=f"Bearer {SECRET}", nested={"k": [SECRET]}
        )
        logging.getLogger("apscheduler.x").error("job failed with key %s", "sk_live_123456")
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            structlog.get_logger("t").exception("crash")
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert SECRET not in err and "sk_live_123456" not in err
    assert err.count(REDACTED) >= 4 and "job failed with key" in err
