"""Group commit for acks: deliveries that finish while an ack is on its way to Redis are
acknowledged together in the next round trip, instead of one round trip each."""

from __future__ import annotations

import asyncio

from service.store.claims import ClaimedEvent
from service.store.queue import EventQueue


class AckBatcher:
    """One endpoint's acks. `ack` returns once its event is acknowledged (or raises the Redis
    error of the batch it was in), exactly as a single ack would."""

    def __init__(self, queue: EventQueue, endpoint_id: str) -> None:
        self.queue = queue
        self.endpoint_id = endpoint_id
        self._pending: list[tuple[ClaimedEvent, asyncio.Future[bool]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def ack(self, event: ClaimedEvent) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((event, done))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._send_pending())
        return await done

    async def _send_pending(self) -> None:
        await asyncio.sleep(0)  # acks of this turn of the loop join the first batch
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                flags = await self.queue.ack_many(self.endpoint_id, [e for e, _ in batch])
                for (_, done), flag in zip(batch, flags, strict=True):
                    if not done.done():
                        done.set_result(flag)
            except BaseException as error:  # each waiting delivery sees its batch's error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                if not isinstance(error, Exception):  # cancelled: nobody waits forever
                    for _, done in self._pending:
                        done.cancel()
                    self._pending = []
                    raise
