"""Group commit for acks. A sender does not wait for its event's ack: the ack joins the next
batch, sent once a round of slots is waiting or a few milliseconds after the first of them,
and the acks that arrive while a batch is on its way to Redis go in the round trip after it.
A Redis round trip costs the client as much CPU as a good part of a delivery, so one per
batch instead of one per event is much of what a worker saves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from service.store.claims import ClaimedEvent
from service.store.queue import EventQueue

log = structlog.get_logger("delivery")

MAX_DELAY = 0.005  # how long an ack waits for others at most


class AckBatcher:
    """One endpoint's acks. `on_done(event, acked)` follows each: acknowledged (True), or its
    claim was lost meanwhile or Redis failed (False; then the claim runs out and the event is
    sent again, same id). Either way this process is done with the event."""

    def __init__(
        self,
        queue: EventQueue,
        endpoint_id: str,
        on_done: Callable[[ClaimedEvent, bool], None],
        *,
        batch: int,
        max_delay: float = MAX_DELAY,
    ) -> None:
        self.queue = queue
        self.endpoint_id = endpoint_id
        self.on_done = on_done
        self.batch = batch
        self.max_delay = max_delay
        self._waiting: list[ClaimedEvent] = []
        self._sending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, event: ClaimedEvent) -> None:
        self._waiting.append(event)
        if self._sending is not None and not self._sending.done():
            return  # the batch on its way takes it in its next round trip
        if len(self._waiting) >= self.batch:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting and (self._sending is None or self._sending.done()):
            self._sending = asyncio.create_task(self._send_waiting())

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                acked = await self.queue.ack_many(self.endpoint_id, batch)
            except Exception as e:  # whatever it is, each event of the batch is let go
                log.warning(
                    "delivery_ack_failed",
                    endpoint=self.endpoint_id,
                    events=len(batch),
                    error=str(e),
                )
                acked = [False] * len(batch)
            for event, done in zip(batch, acked, strict=True):
                self.on_done(event, done)

    async def flush(self) -> None:
        """Until every ack added so far is sent (before a stop hands the rest back)."""
        while self._waiting or (self._sending is not None and not self._sending.done()):
            self._send()
            if self._sending is not None:
                await asyncio.gather(self._sending, return_exceptions=True)
