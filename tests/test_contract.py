"""The contract as receivers and operators get it: /openapi.json generated from the models
(a `webhooks` entry per event type, importable as an event catalog), docs/events.md
generated from them, and the guide's verification code working on a signed body."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from service.api.openapi import build_openapi
from service.changes import events as ev
from service.contract.guide import events_guide
from service.contract.webhooks import CATALOG
from service.delivery.signing import secret_key, webhook_headers
from tests.helpers import ROOT, SECRET
from tests.webhook_schemas import body_problem, validators


def test_the_document_is_openapi_3_1_with_a_webhook_per_event_type() -> None:
    document = build_openapi(admin=True)
    assert document["openapi"] == "3.1.0"
    webhooks = document["webhooks"]
    assert list(webhooks) == [entry.name for entry in CATALOG]
    assert {*ev.EVENT_TYPES, ev.TEST} <= set(webhooks)
    schemas = document["components"]["schemas"]
    for name, webhook in webhooks.items():
        # what Svix's and Convoy's importers read: the POST, its JSON body's schema, a 2xx
        content = webhook["post"]["requestBody"]["content"]["application/json"]
        ref = content["schema"]["$ref"]
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
        assert "200" in webhook["post"]["responses"], name
        assert body_problem(content["example"]) is None, name
    # every reference points at a schema the document holds
    text = json.dumps(document)
    assert {
        r.rsplit("/", 1)[1] for r in re.findall(r'"(#/components/schemas/[^"]+)"', text)
    } <= set(schemas)


def test_every_answer_of_the_admin_api_is_a_model() -> None:
    """No hand-written answer schema: each one is a model's, in components."""
    for path, item in build_openapi(admin=True)["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for content_type, content in response.get("content", {}).items():
                    if content_type == "application/json" and path != "/openapi.json":
                        assert "$ref" in content["schema"], (method, path, status)


@pytest.mark.parametrize("entry", CATALOG, ids=lambda e: e.name)
def test_a_schema_takes_its_example_and_refuses_what_is_not_its_type(entry: Any) -> None:
    body = entry.example_body()
    assert body_problem(body) is None
    without_data = {k: v for k, v in body.items() if k != "data"}
    assert body_problem(without_data) == f"{entry.name} at $: 'data' is a required property"
    other = next(e for e in CATALOG if e.data is not entry.data)
    assert validators()[entry.name].is_valid({**body, "data": other.example}) is False
    assert validators()[entry.name].is_valid({**body, "type": other.name}) is False
    assert validators()[entry.name].is_valid({**body, "extra": 1}) is False
    assert validators()[entry.name].is_valid({**body, "id": "evt_1"}) is False
    entry.model.model_validate(body)  # the model says what its schema says


def test_the_receivers_guide_is_generated_from_the_models() -> None:
    assert (ROOT / "docs/events.md").read_text() == events_guide(), "run `make docs`"


def _signed(body: bytes) -> dict[str, str]:
    return webhook_headers([secret_key(SECRET)], "evt_" + "0" * 32, int(time.time()), body, "t")


def _code(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", events_guide(), re.S)
    return str(code)


def test_the_guides_python_verification() -> None:
    done: list[str] = []
    scope: dict[str, Any] = {
        "already_processed": lambda _id: False,
        "mark_training_done": lambda user, assignment: done.append(f"{user}/{assignment}"),
    }
    exec(_code("python").replace("whsec_...", SECRET), scope)
    body = json.dumps(CATALOG[3].example_body()).encode()
    assert CATALOG[3].name == ev.COMPLETED
    headers = _signed(body)
    assert scope["handle"](body, headers) == 200
    assert done == ["c28xyrc55866bvuv/123456"]
    assert scope["handle"](body.replace(b"123456", b"123457"), headers) == 401


def test_the_guides_node_verification(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine")
    (tmp_path / "verify.js").write_text(_code("javascript"))
    body = json.dumps(CATALOG[0].example_body())
    headers = _signed(body.encode())
    script = (
        f"const {{ verify }} = require({json.dumps(str(tmp_path / 'verify.js'))});"
        f"const h = {json.dumps(headers)}; const b = Buffer.from({json.dumps(body)});"
        f"console.log(verify({json.dumps(SECRET)}, h, b),"
        f" verify({json.dumps(SECRET)}, h, Buffer.concat([b, Buffer.from(' ')])));"
    )
    answer = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert answer.stdout.split() == ["true", "false"], answer.stderr
