"""Whether Redis takes writes now, and the one test for an out-of-memory refusal.

An out-of-memory Redis (`maxmemory` with `noeviction`) refuses every write that may add
data, so it fails every poll and claim alike until memory is freed. The readiness check
reports such an episode once, when it starts and when it ends; the workers' own failures
during it go to the debug log, so an episode is one line, not one per failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    ConnectionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.exceptions import TimeoutError as RedisTimeout

from service.store import keys

OUT_OF_MEMORY = "out of memory"
CHECK_TIMEOUT = 2.0  # a Redis slower than this to answer one write is not ready


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, OutOfMemoryError)


def log_redis_error(logger: Any, event: str, error: BaseException, **fields: Any) -> None:
    """A worker's failed Redis call: a warning, but an out-of-memory refusal is debug (the
    readiness check reports the episode once)."""
    emit = logger.debug if out_of_memory(error) else logger.warning
    emit(event, error=str(error), **fields)


async def write_problem(redis: Redis) -> str | None:
    """None when Redis takes a write now, else why not: `out of memory`, `read only` (a
    replica, e.g. a former primary after a failover), `no primary` (none the sentinels
    vouch for), `unreachable`, `timeout`, or the error Redis answered."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await redis.set(keys.READY_PROBE, "1", px=10_000)
    except OutOfMemoryError:
        return OUT_OF_MEMORY
    except ReadOnlyError:
        return "read only"
    except MasterNotFoundError:  # the sentinels know no healthy primary: a failover is under way
        return "no primary"
    except (TimeoutError, RedisTimeout):
        return "timeout"
    except (ConnectionError, OSError):
        return "unreachable"
    except RedisError as e:
        return str(e)[:200] or type(e).__name__
    return None
