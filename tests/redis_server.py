"""Whether the tests can have a real redis-server: CI fails without one, a dev machine skips.
And a Redis Sentinel, which is the same binary run with `--sentinel`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from service.sim.redis_server import RedisServer, free_port, wait_until_answering

__all__ = ["IN_CI", "RedisServer", "SentinelServer", "free_port", "require_redis_server"]


def require_redis_server() -> str | None:
    """None when redis-server is available, else why not (CI fails on it, dev skips)."""
    if shutil.which("redis-server"):
        return None
    return "redis-server is not installed (apt-get install -y redis-server)"


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class SentinelServer:
    """One sentinel watching `service` on a primary at 127.0.0.1:`primary_port`, quick to
    judge it down (`down_after_ms`) and to fail over. A quorum of 1: alone, it decides."""

    def __init__(
        self,
        workdir: Path,
        primary_port: int,
        *,
        service: str = "mymaster",
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
    ) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"  # `redis-sentinel` is this binary
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.service = service
        self.config = workdir / "sentinel.conf"
        self.lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(self.lines) + "\n")  # sentinel rewrites it: ours
        self.process = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        wait_until_answering(self.port, self.process, "redis-sentinel")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
