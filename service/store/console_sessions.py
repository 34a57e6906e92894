"""Signed-out console sessions. A session is a signed cookie, valid on any replica until it
expires; signing out writes the session's id here, where every replica checks it, for as
long as the cookie would still be valid (then the key expires by itself)."""

from __future__ import annotations

from redis.asyncio import Redis

from service.store import keys


class SignedOutSessions:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def sign_out(self, session_id: str, seconds_left: int) -> None:
        await self.redis.set(keys.console_signed_out(session_id), "1", ex=max(1, seconds_left))

    async def is_signed_out(self, session_id: str) -> bool:
        return bool(await self.redis.exists(keys.console_signed_out(session_id)))
