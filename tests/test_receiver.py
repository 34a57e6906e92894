"""The verifying webhook receiver, exercised over real loopback HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from service.sim.receiver import (
    Answer,
    ReceivedEvent,
    Receiver,
    format_event,
    hang,
    start_receiver_server,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
# the receiver's own tests sign bodies of their own (not the catalog's)
pytestmark = pytest.mark.any_webhook_body

EVENT = {
    "id": "evt_1",
    "type": "assignment.completed",
    "timestamp": "2026-11-28T06:00:00.123Z",
    "data": {
        "account_id": "acc_1",
        "user_id": "u_1",
        "assignment_id": "a_1",
        "sequence": 2,
        "changed_fields": ["completed_at", "progress", "status"],
    },
}


def signed(
    body: dict[str, Any], *secrets: str, msg_id: str = "evt_1", at: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body bytes and Standard Webhooks headers, one signature per secret."""
    payload = json.dumps(body)
    when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    sigs = " ".join(Webhook(s).sign(msg_id, when, payload) for s in secrets)
    return payload.encode(), {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": sigs,
        "content-type": "application/json",
        "user-agent": "lms-webhooks/test",
    }


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def post(self, raw: bytes, headers: dict[str, str], give_up: float = 5) -> int:
        async with self.http.post(
            self.url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=give_up)
        ) as resp:
            await resp.read()
            return resp.status


async def serve(receiver: Receiver) -> AsyncIterator[Client]:
    runner, base = await start_receiver_server(receiver)
    async with aiohttp.ClientSession() as http:
        yield Client(http, f"{base}/hooks")
    await runner.cleanup()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver([SECRET])


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[Client]:
    async for c in serve(receiver):
        yield c


async def test_signed_request_is_verified_and_recorded(receiver: Receiver, client: Client) -> None:
    seen: list[ReceivedEvent] = []
    receiver.on_event = seen.append
    raw, headers = signed(EVENT, SECRET)
    assert await client.post(raw, headers) == 200
    [event] = receiver.events
    assert receiver.received == [event] and seen == [event]
    assert event.verified and event.error is None and event.status == 200
    assert event.webhook_id == "evt_1" and event.body == EVENT and event.raw == raw
    assert event.timestamp == headers["webhook-timestamp"]
    assert event.signature == headers["webhook-signature"]
    assert event.user_agent == "lms-webhooks/test" and event.path == "/hooks"
    assert event.type == "assignment.completed" and event.data["sequence"] == 2
    assert abs(event.received_at - time.time()) < 5
    line = format_event(event)
    assert "✓" in line and "acc_1/u_1/a_1" in line and "seq=2" in line
    assert SECRET not in repr(receiver)


@pytest.mark.parametrize(
    "tamper",
    ["wrong_secret", "body_changed", "missing_header", "too_old", "garbage_signature"],
)
async def test_bad_requests_get_401(receiver: Receiver, client: Client, tamper: str) -> None:
    raw, headers = signed(EVENT, SECRET)
    if tamper == "wrong_secret":
        raw, headers = signed(EVENT, OTHER)
    elif tamper == "body_changed":
        raw = raw.replace(b"acc_1", b"acc_2")
    elif tamper == "missing_header":
        del headers["webhook-signature"]
    elif tamper == "too_old":
        raw, headers = signed(EVENT, SECRET, at=time.time() - 600)
    else:
        headers["webhook-signature"] = "v1 nonsense"
    receiver.responses.append(Answer(status=202))
    assert await client.post(raw, headers) == 401
    [event] = receiver.received
    assert not event.verified and event.error and event.status == 401
    assert receiver.events == []
    assert "✗" in format_event(event)
    assert list(receiver.responses) == [Answer(status=202)]  # left for a real delivery


async def test_two_secrets_rotation() -> None:
    receiver = Receiver([SECRET, OTHER])
    async for client in serve(receiver):
        for secrets in ((SECRET,), (OTHER,), (OTHER, SECRET)):
            raw, headers = signed(EVENT, *secrets)
            assert await client.post(raw, headers) == 200
        raw, headers = signed(EVENT, "whsec_" + "QUJD" * 8)
        assert await client.post(raw, headers) == 401
    assert [e.verified for e in receiver.received] == [True, True, True, False]


async def test_wider_tolerance_accepts_older_timestamps() -> None:
    receiver = Receiver([SECRET], tolerance_seconds=900)
    async for client in serve(receiver):
        raw, headers = signed(EVENT, SECRET, at=time.time() - 600)
        assert await client.post(raw, headers) == 200
        raw, headers = signed(EVENT, OTHER, at=time.time() - 600)
        assert await client.post(raw, headers) == 401


async def test_programmed_answers_in_order(receiver: Receiver, client: Client) -> None:
    receiver.responses.extend(
        [
            Answer(status=500, body="boom"),
            Answer(status=429, headers={"Retry-After": "1"}),
            Answer(status=204, delay=0.1),
        ]
    )
    raw, headers = signed(EVENT, SECRET)
    statuses = [await client.post(raw, headers) for _ in range(4)]
    assert statuses == [500, 429, 204, 200]
    assert [e.status for e in receiver.received] == [500, 429, 204, 200]
    assert len(receiver.events) == 2  # only the 2xx answers count as delivered
    assert receiver.event_ids() == ["evt_1", "evt_1"]


async def test_hang_times_the_sender_out(receiver: Receiver, client: Client) -> None:
    receiver.responses.append(hang())
    raw, headers = signed(EVENT, SECRET)
    with pytest.raises(TimeoutError):
        await client.post(raw, headers, give_up=0.2)
    assert len(receiver.received) == 1 and receiver.events == []
    assert await client.post(raw, headers) == 200


async def test_wait_for_count_predicate_and_timeout(receiver: Receiver, client: Client) -> None:
    with pytest.raises(TimeoutError, match="1 events"):
        await receiver.wait_for(1, timeout=0.1)
    raw, headers = signed(EVENT, SECRET)
    await client.post(raw, headers)
    assert len(await receiver.wait_for(1, timeout=1)) == 1
    got = await receiver.wait_for(
        lambda evs: any(e.type == "assignment.completed" for e in evs), timeout=1
    )
    assert got[0].webhook_id == "evt_1"
    with pytest.raises(TimeoutError, match="predicate"):
        await receiver.wait_for(lambda evs: len(evs) > 5, timeout=0.05)


def test_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        Receiver([])
