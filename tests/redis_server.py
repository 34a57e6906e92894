"""Whether the tests can have a real redis-server: CI fails without one, a dev machine skips."""

from __future__ import annotations

import os
import shutil

from service.sim.redis_server import RedisServer, free_port

__all__ = ["IN_CI", "RedisServer", "free_port", "require_redis_server"]


def require_redis_server() -> str | None:
    """None when redis-server is available, else why not (CI fails on it, dev skips)."""
    if shutil.which("redis-server"):
        return None
    return "redis-server is not installed (apt-get install -y redis-server)"


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
