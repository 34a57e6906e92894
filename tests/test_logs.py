"""Secrets never reach a log line, whether structlog's or a library's."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

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


def test_every_json_line_is_json_whatever_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    """Upstream data reaches log values: an integer beyond 64 bits, a lone surrogate, text
    beyond ASCII, and values JSON has no type for each leave one line of valid JSON."""
    configure_logging("info", "json")
    try:
        log = structlog.get_logger("t")
        log.warning("huge", value=2**70)
        log.warning("surrogate", value="bad \udc80 text")
        log.warning("text", value="Zoë ✓ 学習")
        log.warning("objects", when=datetime(2026, 1, 2, tzinfo=UTC), ids={"a"}, key=Path("/x"))
    finally:
        logging.getLogger().handlers = []
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["huge", "surrogate", "text", "objects"]
    assert lines[0]["value"] == 2**70 and lines[2]["value"] == "Zoë ✓ 学習"
    assert "bad" in lines[1]["value"] and lines[3]["when"].startswith("2026-01-02")
