"""The delivery baseline: a plain aiohttp POST loop, nothing else, run as its own process.

`python -m service.bench.plain_post URL COUNT CONCURRENCY` posts one realistic signed body
COUNT times, CONCURRENCY at a time, and prints {"per_second": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from service.delivery.signing import secret_key, webhook_headers


async def post_loop(url: str, count: int, concurrency: int, body: str, secret: str) -> float:
    headers = webhook_headers([secret_key(secret)], "evt_plain", int(time.time()), body, "plain")
    remaining = count

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(url, data=body.encode(), headers=headers) as response:
                await response.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def main() -> None:
    url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    body, secret = sys.stdin.read(), sys.argv[4]
    rate = asyncio.run(post_loop(url, count, concurrency, body, secret))
    print(json.dumps({"per_second": rate}))


if __name__ == "__main__":
    main()
