"""The service's own OpenAPI document, served at `GET /openapi.json`."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.endpoint_health import EndpointState
from service.operations import MAX_LIMIT, REDELIVER_OUTCOMES
from service.store.log import OUTCOMES
from service.user_ids import MAX_USER_ID, USER_ID_SCHEMA

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}
_HEALTH = {
    "type": "object",
    "required": ["status", "consecutive_failures"],
    "properties": {
        "status": {"type": "string", "enum": [s.value for s in EndpointState]},
        "consecutive_failures": {"type": "integer"},
        "failing_since": {"type": ["number", "null"]},
        "paused_until": {"type": ["number", "null"]},
        "last_error": {"type": ["string", "null"]},
        "last_success_at": {"type": ["number", "null"]},
        "disabled_reason": {"type": ["string", "null"]},
        "pauses": {"type": "integer"},
        "hold_until": {"type": ["number", "null"]},
    },
}
_USER_REF = {
    "type": "object",
    "required": ["account_id", "user_id"],
    "properties": {
        "account_id": {"type": "string", "minLength": 1},
        "user_id": {"type": "string", "minLength": 1},
    },
}
# a user to track: an account of the config, an id a request can name (service/user_ids.py)
_NEW_USER = {
    "type": "object",
    "required": ["account_id", "user_id"],
    "properties": {
        "account_id": {"type": "string", "minLength": 1, "description": "a configured account"},
        "user_id": USER_ID_SCHEMA,
    },
}


_NULLABLE_INT = {"type": ["integer", "null"]}
_READ_STATE = {
    "type": ["object", "null"],
    "required": ["watermark_ms", "last_read_ms", "next_read_at_ms", "failures"],
    "properties": {
        "watermark_ms": _NULLABLE_INT,
        "last_read_ms": _NULLABLE_INT,
        "last_full_read_ms": _NULLABLE_INT,
        "next_read_at_ms": _NULLABLE_INT,
        "failures": {"type": "integer"},
        "last_error": {"type": ["string", "null"]},
    },
}
_ACCOUNT = {
    "type": "object",
    "required": ["account_id", "strategy", "strategy_in_force", "users", "users_tracked"],
    "properties": {
        "account_id": {"type": "string"},
        "strategy": {"type": "string", "enum": ["per_user", "account", "auto"]},
        "strategy_in_force": {"type": "string", "enum": ["per_user", "account"]},
        "fallback": {
            "type": ["object", "null"],
            "description": "why a `strategy: auto` account is polled per user, and until when",
            "properties": {
                "reason": {"type": "string"},
                "since": {"type": "number"},
                "retry_at": {"type": "number"},
            },
        },
        "users": {"type": "string", "enum": ["all", "listed"]},
        "users_tracked": {"type": "integer"},
        "feed": {"$ref": "#/components/schemas/ReadState"},
        "listing": {"$ref": "#/components/schemas/ReadState"},
        "backoff": {
            "type": ["object", "null"],
            "properties": {
                "until": {"type": "number"},
                "failures": {"type": "integer"},
                "error": {"type": "string"},
            },
        },
        "paused_until": {
            "type": ["number", "null"],
            "description": "until when (epoch seconds) the account's provider asked it to "
            "wait (a 429 with provider_errors); its reads wait, the other accounts' go on",
        },
    },
}


_SECONDS_BY_STRATEGY = {
    "type": "object",
    "required": ["per_user", "account", "listing", "full_resync"],
    "properties": {
        k: {"type": "number"} for k in ("per_user", "account", "listing", "full_resync")
    },
}
_BUDGET = {
    "type": "object",
    "required": [
        "allowed_per_minute",
        "needed_per_minute",
        "budget_per_minute",
        "fits",
        "effective_interval_seconds",
        "configured_interval_seconds",
        "users",
        "accounts",
    ],
    "properties": {
        "allowed_per_minute": {"type": "number", "description": "97% of the key's budget"},
        "needed_per_minute": {"type": "number"},
        "budget_per_minute": {"type": "integer"},
        "fits": {"type": "boolean"},
        "effective_interval_seconds": _SECONDS_BY_STRATEGY,
        "configured_interval_seconds": _SECONDS_BY_STRATEGY,
        "users": {
            "type": "object",
            "properties": {"per_user": {"type": "integer"}, "account": {"type": "integer"}},
        },
        "accounts": {
            "type": "object",
            "properties": {"account": {"type": "integer"}, "listing": {"type": "integer"}},
        },
        "adaptive": {
            "type": ["object", "null"],
            "properties": {
                "min_interval_seconds": {"type": "number"},
                "max_interval_seconds": {"type": "number"},
                "accounts": {
                    "type": "object",
                    "description": "how often an account's feed is read, busy to quiet",
                    "properties": {
                        "min_interval_seconds": {"type": "number"},
                        "max_interval_seconds": {"type": "number"},
                    },
                },
            },
        },
    },
}


_NULLABLE_STRING = {"type": ["string", "null"]}
_CURSOR = {
    "type": ["string", "null"],
    "description": "pass it as `cursor` for the next page; null: the end",
}
_OUTCOME = {
    "type": "object",
    "required": ["outcome", "attempts"],
    "properties": {
        "outcome": {"type": "string", "enum": list(OUTCOMES)},
        "attempts": {"type": "integer", "minimum": 0},
    },
}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "type": {"type": "string"},
    "timestamp": {
        "type": ["string", "null"],
        "description": "the event's own (ISO 8601): when its change was detected",
    },
    "logged_at_ms": {"type": "integer", "description": "when the log recorded it"},
    "account_id": _NULLABLE_STRING,
    "user_id": _NULLABLE_STRING,
    "assignment_id": _NULLABLE_STRING,
    "endpoints": {
        "type": "object",
        "description": "endpoint id → its outcome there and the attempts made",
        "additionalProperties": {"$ref": "#/components/schemas/Outcome"},
    },
}
_SUMMARY = {
    "type": "object",
    "required": list(_SUMMARY_PROPERTIES),
    "properties": _SUMMARY_PROPERTIES,
}
_ATTEMPT = {
    "type": "object",
    "required": [
        "attempt",
        "started_at_ms",
        "duration_ms",
        "status",
        "error",
        "response_body",
        "response_truncated",
        "next_attempt_at_ms",
    ],
    "properties": {
        "attempt": {"type": "integer", "description": "its number in the retry schedule"},
        "started_at_ms": {"type": "integer"},
        "duration_ms": {"type": "number"},
        "status": {"type": ["integer", "null"], "description": "null: no answer"},
        "error": _NULLABLE_STRING,
        "response_body": {
            "type": ["string", "null"],
            "description": "the first 1 KiB of the answer's body, as text (untrusted)",
        },
        "response_truncated": {"type": "boolean"},
        "next_attempt_at_ms": {"type": ["integer", "null"], "description": "null: none"},
    },
}
_EVENT = {
    "type": "object",
    "required": [*_SUMMARY_PROPERTIES, "body", "attempts"],
    "properties": {
        **_SUMMARY_PROPERTIES,
        "body": {"description": "the webhook body exactly as sent, parsed"},
        "attempts": {
            "type": "object",
            "description": "endpoint id → its attempts, oldest first",
            "additionalProperties": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Attempt"},
            },
        },
    },
}
_EVENT_PAGE = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/EventSummary"}},
        "next_cursor": _CURSOR,
    },
}
_TEST_SEND = {
    "type": "object",
    "required": ["event_id", "delivered", "status", "error", "duration_ms"],
    "properties": {
        "event_id": {"type": "string"},
        "delivered": {"type": "boolean"},
        "status": {"type": ["integer", "null"]},
        "error": _NULLABLE_STRING,
        "duration_ms": {"type": "number"},
    },
}
_INSTANT = {
    "anyOf": [
        {"type": "integer", "description": "epoch milliseconds"},
        {"type": "string", "description": "epoch milliseconds, or an ISO 8601 instant"},
    ]
}
_REDELIVER = {
    "type": "object",
    "required": ["since", "outcome"],
    "properties": {
        "since": _INSTANT,
        "until": {"anyOf": [*_INSTANT["anyOf"], {"type": "null"}], "description": "default: now"},
        "outcome": {"type": "string", "enum": list(REDELIVER_OUTCOMES)},
    },
}
_ENDPOINT_PAGE = {
    "type": "object",
    "required": ["endpoints", "next_cursor"],
    "properties": {
        "endpoints": {
            "type": "array",
            "items": {
                "allOf": [
                    {"$ref": "#/components/schemas/EndpointHealth"},
                    {
                        "type": "object",
                        "required": ["id", "url", "queue_depth", "dead_letters"],
                        "properties": {
                            "id": {"type": "string"},
                            "url": {"type": "string"},
                            "queue_depth": {"type": "integer"},
                            "dead_letters": {"type": "integer"},
                        },
                    },
                ]
            },
        },
        "next_cursor": _CURSOR,
    },
}
_USER_PAGE = {
    "type": "object",
    "required": ["users", "backed_off_accounts", "next_cursor"],
    "properties": {
        "users": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["account_id", "user_id", "source"],
                "properties": {
                    "account_id": {"type": "string"},
                    "user_id": {"type": "string"},
                    "source": {"type": "string", "enum": ["config", "listing", "runtime"]},
                    "next_poll_at_ms": _NULLABLE_INT,
                    "watermark_ms": _NULLABLE_INT,
                    "last_poll_ms": _NULLABLE_INT,
                    "last_full_sync_ms": _NULLABLE_INT,
                    "failures": {"type": "integer"},
                    "last_error": _NULLABLE_STRING,
                },
            },
        },
        "backed_off_accounts": {"type": "object"},
        "next_cursor": _CURSOR,
    },
}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed request",
        401: "Missing or wrong bearer token",
        404: "Unknown endpoint, account, user or event",
        409: "Conflict",
        429: "Too many wrong bearer tokens from this client: wait `Retry-After` seconds",
        503: "Redis unavailable",
    }
    if 401 in statuses:  # wherever a token is checked, guessing it is limited
        statuses = tuple(sorted({*statuses, 429}))
    return {str(s): _json({"$ref": "#/components/schemas/Error"}, reasons[s]) for s in statuses}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_SECURED: dict[str, Any] = {"security": [{"bearer": []}]}
_OBJECT: dict[str, Any] = {"type": "object"}


def build_openapi(admin: bool) -> dict[str, Any]:
    """The document; the admin routes are listed only when the admin API is on."""
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json(_OBJECT)}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis takes writes and the workers run",
                "description": '`checks`: each true, or why not (e.g. `"redis": "out of '
                'memory"`, `"unreachable"`, `"no primary"`, `"read only"`).',
                "responses": {"200": _json(_OBJECT), "503": _json(_OBJECT, "Not ready")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "OK", "content": {"text/plain": {"schema": {}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json(_OBJECT)}}
        },
    }
    if admin:
        paths.update(_admin_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "lms-webhooks", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _ERROR,
                "EndpointHealth": _HEALTH,
                "UserRef": _USER_REF,
                "NewUser": _NEW_USER,
                "ReadState": _READ_STATE,
                "Account": _ACCOUNT,
                "Budget": _BUDGET,
                "Outcome": _OUTCOME,
                "EventSummary": _SUMMARY,
                "Attempt": _ATTEMPT,
                "Event": _EVENT,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _admin_paths() -> dict[str, Any]:
    endpoint_id = {
        "name": "endpoint_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }

    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            "description": description,
        }

    def page(default: int) -> list[dict[str, Any]]:
        return [
            query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default},
                "the most items in one page",
            ),
            query("cursor", {"type": "string"}, "`next_cursor` of the page before"),
        ]

    instant = "epoch milliseconds or an ISO 8601 instant (UTC without an offset)"
    return {
        "/admin/endpoints": {
            "get": {
                "summary": "Each endpoint's state, failures, queue depth and dead letters",
                **_SECURED,
                "parameters": page(100),
                "responses": {"200": _json(_ENDPOINT_PAGE), **_errors(400, 401, 503)},
            }
        },
        "/admin/endpoints/{endpoint_id}/test": {
            "post": {
                "summary": "Send a signed `webhook.test` event to this endpoint now (never "
                "retried; recorded in the delivery log) and answer with the outcome",
                **_SECURED,
                "parameters": [endpoint_id],
                "responses": {"200": _json(_TEST_SEND), **_errors(400, 401, 404, 503)},
            }
        },
        "/admin/endpoints/{endpoint_id}/redeliver": {
            "post": {
                "summary": "Queue the endpoint's logged events of a time range again, same "
                "ids and bodies, atomically: those delivered, dead-lettered, or either",
                **_SECURED,
                "parameters": [endpoint_id],
                "requestBody": _body(_REDELIVER),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["endpoint", "queued"],
                            "properties": {
                                "endpoint": {"type": "string"},
                                "queued": {"type": "integer", "minimum": 0},
                            },
                        }
                    ),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/admin/events": {
            "get": {
                "summary": "Logged events, newest first, each with its outcome and attempts "
                "per endpoint; a page may be short (even empty) with a cursor to go on",
                **_SECURED,
                "parameters": [
                    query("endpoint", {"type": "string"}, "only the events queued for it"),
                    query("type", {"type": "string"}, "event type"),
                    query("account_id", {"type": "string"}, ""),
                    query("user_id", {"type": "string"}, ""),
                    query("assignment_id", {"type": "string"}, ""),
                    query(
                        "outcome",
                        {"type": "string", "enum": list(OUTCOMES)},
                        "at `endpoint`, or at any endpoint",
                    ),
                    query("since", {"type": "string"}, f"logged at or after: {instant}"),
                    query("until", {"type": "string"}, f"logged at or before: {instant}"),
                    *page(50),
                ],
                "responses": {"200": _json(_EVENT_PAGE), **_errors(400, 401, 404, 503)},
            }
        },
        "/admin/events/{event_id}": {
            "get": {
                "summary": "One logged event: its body as sent and every attempt per endpoint",
                **_SECURED,
                "parameters": [
                    {
                        "name": "event_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Event"}),
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/admin/endpoints/{endpoint_id}/enable": {
            "post": {
                "summary": "Re-enable a disabled or paused endpoint; its queue resumes",
                **_SECURED,
                "parameters": [endpoint_id],
                "responses": {"200": _json(_OBJECT), **_errors(401, 404, 503)},
            }
        },
        "/admin/dead-letters": {
            "get": {
                "summary": "Dead-lettered events of one endpoint, with their last error",
                **_SECURED,
                "parameters": [
                    {
                        "name": "endpoint",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {"200": _json(_OBJECT), **_errors(400, 401, 404, 503)},
            }
        },
        "/admin/dead-letters/replay": {
            "post": {
                "summary": "Queue dead letters again with the same event ids (no ids: all)",
                **_SECURED,
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["endpoint"],
                        "properties": {
                            "endpoint": {"type": "string"},
                            "ids": {"type": "array", "items": {"type": "string"}},
                        },
                    }
                ),
                "responses": {"200": _json(_OBJECT), **_errors(400, 401, 404, 503)},
            }
        },
        "/admin/users": {
            "get": {
                "summary": "Tracked users: the config's, the listings' and those added at run "
                "time, by account and user id",
                **_SECURED,
                "parameters": page(100),
                "responses": {"200": _json(_USER_PAGE), **_errors(400, 401, 503)},
            },
            "post": {
                "summary": "Track a user of a configured account from now on (kept in Redis)",
                "description": f"`user_id`: 1 to {MAX_USER_ID} characters, not `.` or `..` "
                "(400); an account the config does not name: 404.",
                **_SECURED,
                "requestBody": _body({"$ref": "#/components/schemas/NewUser"}),
                "responses": {
                    "201": _json(_OBJECT, "Added"),
                    "200": _json(_OBJECT, "Already tracked"),
                    **_errors(400, 401, 404, 503),
                },
            },
        },
        "/admin/users/{account_id}/{user_id}": {
            "delete": {
                "summary": "Stop tracking a run-time user",
                **_SECURED,
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in ("account_id", "user_id")
                ],
                "responses": {"200": _json(_OBJECT), **_errors(401, 404, 409, 503)},
            }
        },
        "/admin/accounts": {
            "get": {
                "summary": "Each account's strategy in force (and why), feed and listing state, "
                "users tracked and back-off",
                **_SECURED,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["accounts"],
                            "properties": {
                                "accounts": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Account"},
                                }
                            },
                        }
                    ),
                    **_errors(401, 503),
                },
            }
        },
        "/admin/budget": {
            "get": {
                "summary": "The budget plan: requests a minute needed and allowed, the effective "
                "cadence per strategy, users and accounts per strategy",
                **_SECURED,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Budget"}),
                    **_errors(401, 503),
                },
            }
        },
        "/admin/poll": {
            "post": {
                "summary": "Poll a tracked user now",
                **_SECURED,
                "requestBody": _body({"$ref": "#/components/schemas/UserRef"}),
                "responses": {"202": _json(_OBJECT, "Due now"), **_errors(400, 401, 404, 503)},
            }
        },
    }
