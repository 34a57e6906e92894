"""A webhook receiver that verifies Standard Webhooks signatures and records what it got.

Used by the demo, `lms-webhooks receive` and the tests. Its answers can be programmed
(status, delay, headers) to exercise the sender's retries.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook

__all__ = [
    "Answer",
    "ReceivedEvent",
    "Receiver",
    "create_app",
    "format_event",
    "hang",
    "run_standalone_receiver",
    "start_receiver_server",
]

# standardwebhooks' verify() has a fixed 5-minute window of its own
_LIBRARY_TOLERANCE = 300


@dataclass
class Answer:
    """How to answer one request."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def hang(seconds: float = 3600.0) -> Answer:
    """An answer that never comes in time (the sender's timeout fires first)."""
    return Answer(delay=seconds)


@dataclass
class ReceivedEvent:
    """One request as received."""

    webhook_id: str | None
    timestamp: str | None  # the webhook-timestamp header
    signature: str | None  # the webhook-signature header
    body: dict[str, Any] | None  # parsed JSON object, None when not one
    raw: bytes
    verified: bool
    received_at: float
    headers: dict[str, str]
    user_agent: str | None
    path: str = "/"
    status: int = 0  # what the receiver answered
    error: str | None = None  # why verification failed

    @property
    def type(self) -> str | None:
        """The event type from the body."""
        value = (self.body or {}).get("type")
        return value if isinstance(value, str) else None

    @property
    def data(self) -> dict[str, Any]:
        """The body's `data` object ({} when absent)."""
        value = (self.body or {}).get("data")
        return value if isinstance(value, dict) else {}


class Receiver:
    """Verifies each POST against any of `secrets` and records it."""

    def __init__(self, secrets: list[str], tolerance_seconds: int = 300) -> None:
        if not secrets:
            raise ValueError("at least one secret is required")
        self.secrets = list(secrets)
        self.tolerance_seconds = tolerance_seconds
        self._hooks = [Webhook(s) for s in secrets]
        self.received: list[ReceivedEvent] = []  # every request
        self.events: list[ReceivedEvent] = []  # verified and answered 2xx
        self.responses: collections.deque[Answer] = collections.deque()
        self.default_answer = Answer()
        # chooses the answer to a verified request by what it carries (e.g. an event a
        # receiver cannot handle), before `responses`; None leaves it to them
        self.answer_for: Callable[[ReceivedEvent], Answer | None] | None = None
        # called once per request, after verification and once its answer is chosen
        self.on_event: Callable[[ReceivedEvent], None] | None = None

    def __repr__(self) -> str:  # secrets stay out of logs
        return f"Receiver(secrets=<{len(self.secrets)}>, received={len(self.received)})"

    def verify(self, raw: bytes, headers: Mapping[str, str]) -> str | None:
        """None when some secret verifies the request, else the reason it does not."""
        lower = {k.lower(): v for k, v in headers.items()}
        names = ("webhook-id", "webhook-timestamp", "webhook-signature")
        wanted: dict[str, str] = {k: lower[k] for k in names if k in lower}
        if len(wanted) < 3:
            return "missing webhook-id, webhook-timestamp or webhook-signature"
        try:
            ts = int(wanted["webhook-timestamp"])
        except ValueError:
            return "webhook-timestamp is not integer seconds"
        skew = abs(time.time() - ts)
        if skew > self.tolerance_seconds:
            return f"timestamp {skew:.0f}s away from now (tolerance {self.tolerance_seconds}s)"
        reason = "no matching signature"
        for hook in self._hooks:
            try:
                if skew <= _LIBRARY_TOLERANCE:
                    hook.verify(raw, wanted, json_parse=False)
                    return None
                # a wider tolerance than the library's: compare against its signature directly
                expected = hook.sign(
                    wanted["webhook-id"], datetime.fromtimestamp(ts, UTC), raw.decode()
                )
                if expected in wanted["webhook-signature"].split(" "):
                    return None
            # anything the library raises on is a request a real receiver would reject
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
        return reason

    async def wait_for(
        self,
        predicate_or_count: int | Callable[[list[ReceivedEvent]], bool],
        timeout: float = 5.0,
    ) -> list[ReceivedEvent]:
        """Wait until `len(events) >= n` or `predicate(events)`; returns the events."""
        deadline = time.monotonic() + timeout
        while True:
            if isinstance(predicate_or_count, int):
                done = len(self.events) >= predicate_or_count
            else:
                done = predicate_or_count(self.events)
            if done:
                return self.events
            if time.monotonic() >= deadline:
                wanted = (
                    f"{predicate_or_count} events"
                    if isinstance(predicate_or_count, int)
                    else "the predicate"
                )
                raise TimeoutError(
                    f"waited {timeout}s for {wanted}: {len(self.events)} events "
                    f"({[e.type for e in self.events]}), {len(self.received)} requests "
                    f"({sum(not r.verified for r in self.received)} unverified)"
                )
            await asyncio.sleep(0.02)

    def event_ids(self) -> list[str | None]:
        """webhook-id of each accepted event, duplicates included."""
        return [e.webhook_id for e in self.events]

    async def handle(self, request: web.Request) -> web.Response:
        """Verify, record, answer."""
        raw = await request.read()
        headers = dict(request.headers)
        error = self.verify(raw, request.headers)
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        event = ReceivedEvent(
            webhook_id=request.headers.get("webhook-id"),
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=parsed if isinstance(parsed, dict) else None,
            raw=raw,
            verified=error is None,
            received_at=time.time(),
            headers=headers,
            user_agent=request.headers.get("User-Agent"),
            path=request.path,
            error=error,
        )
        self.received.append(event)
        # an unverifiable request gets 401 and leaves the programmed answers for real ones
        if error is not None:
            answer = Answer(
                status=401, body=json.dumps({"error": "invalid signature", "detail": error})
            )
        elif self.answer_for is not None and (chosen := self.answer_for(event)) is not None:
            answer = chosen
        else:
            answer = self.responses.popleft() if self.responses else self.default_answer
        event.status = answer.status
        if self.on_event is not None:
            self.on_event(event)
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        if event.verified and 200 <= answer.status < 300:
            self.events.append(event)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)


def create_app(receiver: Receiver) -> web.Application:
    """POST to any path is a webhook delivery."""
    app = web.Application()
    app.add_routes([web.post("/{tail:.*}", receiver.handle)])
    return app


async def start_receiver_server(
    receiver: Receiver, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `receiver` (port 0: a free one); returns the runner and base URL."""
    # handler_cancellation: a sender timing out on a hung answer ends that handler, so
    # cleanup need not wait for it
    runner = web.AppRunner(
        create_app(receiver), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{runner.addresses[0][1]}"


def format_event(event: ReceivedEvent) -> str:
    """One readable line per request."""
    when = datetime.fromtimestamp(event.received_at).strftime("%H:%M:%S.%f")[:-3]
    mark = "✓" if event.verified else "✗"
    data = event.data
    where = "/".join(str(data.get(k, "?")) for k in ("account_id", "user_id", "assignment_id"))
    line = (
        f"{when} {mark} {event.status} {event.type or '?':<30} {where} "
        f"seq={data.get('sequence', '?')} changed={data.get('changed_fields', [])}"
    )
    if event.error:
        line += f"  ({event.error})"
    return line


async def run_standalone_receiver(secret: str, host: str, port: int) -> None:
    """`lms-webhooks receive`: print each event until cancelled."""
    receiver = Receiver([s for s in secret.split(",") if s])
    receiver.on_event = lambda event: print(format_event(event), flush=True)
    runner, base = await start_receiver_server(receiver, host, port)
    print(f"receiving webhooks at {base}/ (any path), verifying signatures", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
