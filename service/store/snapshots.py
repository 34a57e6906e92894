"""A user's snapshots as Redis holds them: one deflated JSON value per user (and 0.1's hash,
one field per assignment, read until the user's next commit replaces it)."""

from __future__ import annotations

import base64
import json
import zlib

from service import jsonfmt
from service.changes.detect import Snapshot


def encode_snapshots(snapshots: dict[str, Snapshot]) -> str:
    """All of a user's snapshots as one value: {id: [sequence, record]} as JSON, deflated.

    One value per user, not a hash field per assignment: records of one user share most of
    their text, so together they deflate to about a fifth, and Redis keeps one entry, not ten.
    Base64, because the client decodes replies as text.
    """
    plain = jsonfmt.dumps_bytes({a: [s.sequence, s.record] for a, s in snapshots.items()})
    return base64.b64encode(zlib.compress(plain, 1)).decode()


def decode_snapshots(raw: str | None) -> dict[str, Snapshot]:
    if not raw:
        return {}
    data = jsonfmt.loads(zlib.decompress(base64.b64decode(raw)))
    return {a: Snapshot(int(seq), record) for a, (seq, record) in data.items()}


def decode_legacy_snapshots(fields: dict[str, str]) -> dict[str, Snapshot]:
    """0.1's hash: one JSON {"s": sequence, "r": record} per assignment."""
    decoded = {name: json.loads(value) for name, value in fields.items()}
    return {a: Snapshot(int(d["s"]), d["r"]) for a, d in decoded.items()}
