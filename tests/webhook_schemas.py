"""The webhook bodies' JSON Schemas as receivers get them: the `webhooks` section of the
service's /openapi.json, checked with `jsonschema` (not with the models that generate it)."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator

from service.api.openapi import build_openapi


@functools.cache
def validators() -> dict[str, Draft202012Validator]:
    """Event type → the validator of its body."""
    document = build_openapi(admin=False)
    found = {}
    for name, webhook in document["webhooks"].items():
        schema = webhook["post"]["requestBody"]["content"]["application/json"]["schema"]
        # its $ref points into the document's components: they travel with it
        root = {**schema, "components": document["components"]}
        Draft202012Validator.check_schema(root)
        found[name] = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return found


def body_problem(body: Any) -> str | None:
    """Why `body` is not a webhook body of the catalog, or None when it is one."""
    kind = body.get("type") if isinstance(body, dict) else None
    validator = validators().get(kind) if isinstance(kind, str) else None
    if validator is None:
        return f"type {kind!r} is no event type of the catalog: {str(body)[:200]}"
    error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.json_path)), None)
    return None if error is None else f"{kind} at {error.json_path}: {error.message[:300]}"


def raw_body_problem(raw: bytes) -> str | None:
    try:
        return body_problem(json.loads(raw))
    except ValueError:
        return f"not JSON: {raw[:100]!r}"
