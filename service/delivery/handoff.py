"""The queue between one endpoint's claimer and its senders, and the claims they hold."""

from __future__ import annotations

import asyncio

from service.store.claims import ClaimedEvent


class Handoff:
    """Claimed events waiting for a sender, and every event this process holds a claim on
    until it is settled (acknowledged, rescheduled, dead-lettered) or handed back.

    One asyncio queue wakes one sender per event, not all of them.
    """

    def __init__(self) -> None:
        self.ready: asyncio.Queue[ClaimedEvent | None] = asyncio.Queue()
        self.held: dict[str, ClaimedEvent] = {}
        self.sending = 0  # taken by a sender whose request is not over
        self.room = asyncio.Event()  # a request ended: room to claim more
        self.closed = False  # stopping: senders start nothing new
        self._settled = asyncio.Event()  # nothing held
        self._settled.set()

    def busy(self) -> int:
        """Events claimed here that have not finished their request."""
        return self.sending + self.ready.qsize()

    def offer(self, event: ClaimedEvent) -> None:
        """A fresh claim. An event still held here (its claim ran out and was claimed again
        by this process) keeps its one sender and takes the new claim's token."""
        if (mine := self.held.get(event.event_id)) is not None:
            mine.token, mine.held_until = event.token, event.held_until
            return
        self.held[event.event_id] = event
        self._settled.clear()
        self.ready.put_nowait(event)

    async def take(self) -> ClaimedEvent | None:
        """The next event to send; None: stop."""
        event = await self.ready.get()
        if event is None or self.closed:
            return None
        self.sending += 1
        return event

    def request_over(self) -> None:
        self.sending -= 1
        self.room.set()

    def settled(self, event: ClaimedEvent) -> None:
        """This process is done with the event."""
        if self.held.get(event.event_id) is event:
            del self.held[event.event_id]
        if not self.held:
            self._settled.set()

    async def all_settled(self) -> None:
        await self._settled.wait()

    def end_senders(self, senders: int) -> None:
        """That many senders end once they reach the end of the queue."""
        for _ in range(senders):
            self.ready.put_nowait(None)

    def close(self, senders: int) -> None:
        """Stopping: every sender ends after its current delivery; events still ready stay
        held, for the worker to hand back."""
        self.closed = True
        self.room.set()  # a claimer waiting for room looks again, and sees it
        self.end_senders(senders)
