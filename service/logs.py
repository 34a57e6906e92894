"""structlog setup: JSON or console, with every configured secret redacted from every line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import orjson
import structlog

REDACTED = "[REDACTED]"


class SecretRedactor:
    """Replaces any configured secret value found in a log line's values."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a secret containing another is replaced whole
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v) for v in value]
        return value

    def __call__(
        self, logger: Any, name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = self.redact(value)
        return event_dict


def _json_bytes(value: Any, *, default: Callable[[Any], Any]) -> bytes:
    """A log line's JSON as bytes: orjson, or `json` where orjson refuses (an integer beyond
    64 bits, a lone surrogate); `default` renders what JSON has no type for."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, default=default).encode("utf-8", "backslashreplace")


def configure_logging(
    level: str = "info", fmt: str = "json", secrets: Iterable[str] = (), *, final: bool = False
) -> None:
    """structlog for our own events; the libraries' stdlib logging goes the same way.

    `final`: this configuration holds for the life of the process, so each module's logger
    is built once on first use. Otherwise (tests, which configure again) every call rebuilds
    it, which costs more than many a delivery's own work.
    """
    json_lines = fmt == "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        SecretRedactor(secrets),  # after format_exc_info: tracebacks are redacted too
    ]
    numeric = logging.getLevelName(level.upper())
    # our own JSON lines (a delivery logs one per attempt) go out as bytes from orjson:
    # about a third less than the standard renderer's str
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.JSONRenderer(_json_bytes) if json_lines else renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(sys.stderr.buffer)
            if json_lines
            else structlog.PrintLoggerFactory(sys.stderr)
        ),
        cache_logger_on_first_use=final,
    )
    # APScheduler, aiohttp and asyncio log through stdlib: same format, same redaction
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
