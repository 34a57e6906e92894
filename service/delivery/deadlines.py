"""Request timeouts for one endpoint, kept by one periodic check instead of a timer per
request: aiohttp's per-request timeout (a timer set and cancelled each time) cost about 5%
of a delivery's CPU. A request runs out between `timeout` and `timeout` plus the check's
period (a tenth of the timeout, at most a second) after it started."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

CHECK_AT_MOST_EVERY = 1.0


class Deadlines:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.period = min(CHECK_AT_MOST_EVERY, timeout / 10)
        self._due: dict[asyncio.Task[object], float] = {}  # the task of each request in flight
        self._expired: set[asyncio.Task[object]] = set()

    async def run(self) -> None:
        """Cancel each request that has run past its deadline (until this task is cancelled)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            for task, deadline in list(self._due.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around one request of the current task. A cancel of ours arrives inside the
        block (the task is suspended in it when we cancel), where `timed_out` tells it apart
        from a stop's."""
        task = asyncio.current_task()
        assert task is not None
        self._due[task] = asyncio.get_running_loop().time() + self.timeout
        try:
            yield
        finally:
            self._due.pop(task, None)
            self._expired.discard(task)

    def timed_out(self) -> bool:
        """In an `except CancelledError` inside `request()`: True when the cancel was ours
        alone (it is then taken back), False for anyone else's (a stop), to re-raise."""
        task = asyncio.current_task()
        if task not in self._expired or task is None or task.cancelling() > 1:
            return False
        task.uncancel()
        return True
