"""config/schema.json is the Settings model's schema, and the shipped configs follow it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.config import fill, interpolate, settings_json_schema

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "STACKONE_API_KEY": "k",
    "HR_WEBHOOK_SECRET": "whsec_c3VwZXJzZWNyZXR3ZWJob29r",
    "REDIS_URL": "redis://redis:6379/0",
    "STACKONE_BASE_URL": "http://simulator:8090",
    "STACKONE_ACCOUNT_ID": "acc_1",
    "LMS_URL": "http://127.0.0.1:1",
    "RECEIVER_URL": "http://127.0.0.1:2",
    "WEBHOOK_SECRET": "whsec_c3VwZXJzZWNyZXR3ZWJob29r",
}


def test_checked_in_schema_is_current() -> None:
    checked_in = json.loads((ROOT / "config" / "schema.json").read_text())
    assert checked_in == settings_json_schema(), "config/schema.json is stale: run `make schema`"


@pytest.mark.parametrize("path", ["config/example.yaml", "deploy/compose-config.yaml"])
def test_shipped_configs_follow_the_schema(path: str) -> None:
    text, values = interpolate((ROOT / path).read_text(), ENV)
    document = fill(yaml.safe_load(text), values)
    jsonschema.validate(document, settings_json_schema())


def test_schema_rejects_unknown_keys() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"stackone": {"api_key": "k", "bogus": 1}}, settings_json_schema())
