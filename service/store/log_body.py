"""How the delivery log keeps an event's body (docs/architecture.md): the events of one
change carry the same `data` (the record and the previous record), so the log keeps that
`data` once, compressed, under a key named after the first event that carries it, and each
event only the name of that key; the body is put back together from the event's id, type
and timestamp.

An event's body is `{"id":"<id>","type":"<type>","timestamp":"<timestamp>","data":<data>}`
(events.Event as serialised once by outbox.route_events). The log splits a body so only
when it starts with exactly that envelope built from the event's id and head: putting it
back together is then the same concatenation, byte for byte (the signature covers it).
Any other body (a test send, a tool's) is kept whole.

Pure: no Redis here.
"""

from __future__ import annotations

import base64
import zlib

# Deflate's preset dictionary: the field names of an event's data and of an assignment
# record as the upstream gives them (CONTRACT.md), so a body's first mention of each costs
# a back-reference. Fixed forever: every stored `data` was compressed with it (a new
# dictionary takes a new FORMAT).
ZDICT = (
    b'{"account_id":"","user_id":"","assignment_id":"","sequence":1,"changed_fields":'
    b'["progress"],"previous":{"id":"","remote_id":"","user_id":"","remote_user_id":"",'
    b'"learning_object_id":"","learning_object_type":{"value":"course","source_value":""},'
    b'"learning_object_external_reference":"","status":{"value":"in_progress",'
    b'"source_value":""},"progress":0,"created_at":"","updated_at":"","assigned_at":"",'
    b'"due_date":"","completed_at":null,"result":null,"certificate_url":null,"course_id":"",'
    b'"unified_custom_fields":{}},"assignment":'
)
FORMAT = "z1:"  # the stored `data`: this, then the base64 of its raw deflate with ZDICT
# A shared `data` is stored behind its holders' count, this many digits wide, so that Lua
# counts them with GETRANGE and SETRANGE (lua/log.lua, share and release).
COUNT_WIDTH = 6
# The queue's form of a body the log put back (redeliver.lua): QUEUED, its envelope, SEP,
# its stored `data`; a JSON body never starts with a control character.
QUEUED = "\x1f"
SEP = "\x1f"
_QUEUED, _SEP = QUEUED.encode(), SEP.encode()
_WBITS = -15  # raw deflate (no zlib header or checksum), inflated with the largest window


def envelope(event_id: str, kind: str, timestamp: str) -> str:
    """What precedes `data` in the body of a logged event (lua/log.lua builds it alike)."""
    return f'{{"id":"{event_id}","type":"{kind}","timestamp":"{timestamp}","data":'


def opening(event_id: str, body: bytes) -> tuple[str, str] | None:
    """The type and timestamp of a body that opens with its envelope (every body the service
    queues does); None for any other body. Read without parsing the `data` after them."""
    # {"id":"<id>","type":"<type>","timestamp":"<timestamp>","data":… split on its quotes
    parts = body.split(b'"', 14)
    if (
        len(parts) < 15
        or parts[:3] != [b"{", b"id", b":"]
        or parts[3] != event_id.encode()
        or parts[4:7] != [b",", b"type", b":"]
        or parts[8:11] != [b",", b"timestamp", b":"]
        or parts[12:14] != [b",", b"data"]
        or not parts[14].startswith(b":")
        or b"\\" in parts[7]
        or b"\\" in parts[11]
    ):
        return None
    return parts[7].decode(), parts[11].decode()


def split(event_id: str, kind: str, timestamp: str, body: bytes) -> bytes | None:
    """The body's `data`, when the body is exactly its envelope, `data` and `}`; else None
    (kept whole). A separator in the envelope would not survive the log's head."""
    head = envelope(event_id, kind, timestamp).encode()
    if SEP.encode() in head or not body.startswith(head) or not body.endswith(b"}"):
        return None
    return body[len(head) : -1]


def pack(data: bytes) -> str:
    """`data` as stored: text, since the store's connections decode replies as UTF-8.

    Deflate with a 4 kB window and little memory (the dictionary and a `data` fit in it):
    its cost here is mostly setting up, paid once per change on the poller's CPU (about
    20 µs); the default 32 kB window and 128 kB hash only added to that. Level 1 saved
    little of it for 13% more bytes. Inflating takes any window up to 32 kB."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -12, 4, zlib.Z_DEFAULT_STRATEGY, ZDICT)
    raw = deflate.compress(data) + deflate.flush()
    return FORMAT + base64.b64encode(raw).decode()


def unpack(stored: str) -> str:
    """`data` as it was packed. ValueError if it is not in FORMAT (or is damaged)."""
    try:
        return inflate(stored).decode()
    except UnicodeDecodeError as e:
        raise ValueError(f"a damaged stored log body: {e}") from None


def inflate(stored: str) -> bytes:
    """`data` as it was packed, its bytes. ValueError if it is not in FORMAT (or is
    damaged)."""
    if not stored.startswith(FORMAT):
        raise ValueError("not a stored log body")
    try:
        inflater = zlib.decompressobj(_WBITS, zdict=ZDICT)
        raw = inflater.decompress(base64.b64decode(stored[len(FORMAT) :], validate=True))
        return raw + inflater.flush()
    except (zlib.error, ValueError) as e:  # binascii.Error too
        raise ValueError(f"a damaged stored log body: {e}") from None


def rejoin(event_id: str, kind: str, timestamp: str, stored: str) -> str:
    """The body as sent, from the event's id, type and timestamp and its stored `data`."""
    return f"{envelope(event_id, kind, timestamp)}{unpack(stored)}}}"


def shared_value(stored: str) -> str:
    """The shared key's value when it is first written: one holder, then `data`."""
    return f"{1:0{COUNT_WIDTH}d}{stored}"


def from_shared(value: str) -> str:
    """`data` as stored, from the shared key's value."""
    return value[COUNT_WIDTH:]


def queued_body(body: bytes) -> bytes:
    """A body as the queue holds it, as sent: redeliver.lua queues a logged event's body in
    its stored form (Lua cannot inflate), which is put back together here."""
    if not body.startswith(_QUEUED):
        return body
    head, _, stored = body[len(_QUEUED) :].partition(_SEP)
    return b"%s%s}" % (head, inflate(stored.decode()))
