"""What a user id must be, pure: the same rule wherever ids enter (the config, the admin API,
an account's user listing), because each id becomes a path segment of its own
(`/unified/lms/users/{id}/assignments`).

`.` and `..` are refused: an HTTP client resolves them as dot segments, so `..` requested
the whole account's assignments (`/unified/lms/assignments`) and sent every one of them as
the user's. The length is bounded: an id is a Redis key, a log field and a URL segment on
every poll.
"""

from __future__ import annotations

MAX_USER_ID = 256  # characters; upstream ids are tens of characters
DOT_SEGMENTS = frozenset({".", ".."})

# the rule as JSON Schema, for config/schema.json and the OpenAPI document
USER_ID_SCHEMA: dict[str, object] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_USER_ID,
    "not": {"enum": sorted(DOT_SEGMENTS)},
}


def user_id_problem(value: object) -> str | None:
    """Why `value` cannot be a user id, or None when it can."""
    if not isinstance(value, str) or not value:
        return "a user id must be a non-empty string"
    if value in DOT_SEGMENTS:
        return f"a user id cannot be {value!r} (a URL path would resolve it)"
    if len(value) > MAX_USER_ID:
        return f"a user id is at most {MAX_USER_ID} characters"
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate: no Redis key or log line encodes it
        return "a user id must be valid Unicode"
    return None
