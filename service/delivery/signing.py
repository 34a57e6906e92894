"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after `whsec_`."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: str | bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key, space-separated.
    `body` as the bytes sent (UTF-8) saves encoding another copy of it."""
    raw = body if isinstance(body, bytes) else body.encode()
    content = f"{msg_id}.{timestamp}.".encode() + raw
    if len(keys) == 1:  # the usual case, without a generator and a join per delivery
        return "v1," + _b64(hmac.digest(keys[0], content, "sha256"))
    return " ".join("v1," + _b64(hmac.digest(key, content, "sha256")) for key in keys)


def _b64(digest: bytes) -> str:
    return binascii.b2a_base64(digest, newline=False).decode()


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: str | bytes, user_agent: str
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }
