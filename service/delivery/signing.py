"""Standard Webhooks signatures (https://www.standardwebhooks.com/), pure."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 after `whsec_`."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one per key, space-separated."""
    content = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode() for key in keys
    )


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: str, user_agent: str
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(keys, msg_id, timestamp, body),
    }
