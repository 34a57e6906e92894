"""Config: interpolation, durations, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main
from service.config import fill, interpolate, load_settings, parse_duration
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """
redis_url: redis://127.0.0.1:6379/0
stackone:
  api_key: ${KEY}
endpoints:
  - id: hr
    url: https://hr.example.com/hooks
    secret: ${SECRET}
"""
ENV = {"KEY": "sk_live_supersecret", "SECRET": "whsec_c3VwZXJzZWNyZXR3ZWJob29r"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("10", 10.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "", "1w", True, None, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    text, values = interpolate("x=${A} y=${B:-dflt} z=${EMPTY:-d2} w=${A:-no}", env)
    assert fill(text, values) == "x=1 y=dflt z=d2 w=1"
    text, values = interpolate("  # ${UNSET} in a comment\nk: ${A}\n", env)
    assert fill(text, values) == "  # ${UNSET} in a comment\nk: 1\n"
    with pytest.raises(ConfigError, match="MISSING"):
        interpolate("${MISSING}", env)


@pytest.mark.parametrize(
    "key", ["@sk_live_S3CRET", "abc #S3CRET", "a: b", "'q\"", "x\n  y: 1", "007", "true"]
)
def test_values_never_change_the_yaml_structure(tmp_path: Path, key: str) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), ENV | {"KEY": key})
    assert settings.stackone.api_key.get_secret_value() == key


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, MINIMAL + "  bad: [unclosed\n"), ENV)
    assert "line" in caught.value.message and ENV["KEY"] not in str(caught.value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_minimal_config_defaults_and_secrets_hidden(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), ENV)
    assert settings.polling.interval == 300.0
    assert settings.delivery.retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]
    assert settings.endpoints[0].secret[0].get_secret_value() == ENV["SECRET"]
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert ENV["KEY"] not in shown and ENV["SECRET"] not in shown


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (("stackone:", "stackone:\n  bogus: 1"), "stackone.bogus"),
        (("redis_url:", "surprise: 1\nredis_url:"), "surprise"),
        (("  api_key: ${KEY}", "  api_key: ${KEY}\n  page_size: 101"), "stackone.page_size"),
        (("url: https://", "url: http://"), "endpoints.0.url"),
        (("secret: ${SECRET}", "secret: nope"), "endpoints.0.secret"),
        (("secret: ${SECRET}", "secret: whsec_abc"), "endpoints.0.secret"),
        (("secret: ${SECRET}", "secret: whsec_"), "endpoints.0.secret"),
        (("secret: ${SECRET}", "secret: ${SECRET}\n    events: [nope]"), "endpoints.0.events"),
        (("secret: ${SECRET}", "secret: ${SECRET}\n    timeout: soon"), "endpoints.0.timeout"),
        (("redis_url: redis", "redis_url: mysql"), "redis_url"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, change: tuple[str, str], path: str) -> None:
    text = MINIMAL.replace(*change)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), ENV)
    assert caught.value.path == path
    assert ENV["KEY"] not in str(caught.value) and ENV["SECRET"] not in str(caught.value)


def test_check_config_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY", "k")
    monkeypatch.setenv("SECRET", ENV["SECRET"])
    good = write(tmp_path, MINIMAL.replace("${KEY}", "k").replace("${SECRET}", ENV["SECRET"]))
    assert main(["check-config", "--config", str(good)]) == 0
    bad = write(tmp_path, MINIMAL.replace("stackone:", "stackone:\n  page_sise: 5"))
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stackone.page_sise" in err and "unknown key" in err
    assert main(["check-config", "--config", str(tmp_path / "absent.yaml")]) == 2


def test_check_config_subprocess_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path, MINIMAL.replace("  - id: hr", "  - id: hr\n    retries: 3"))
    proc = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={"KEY": "k", "SECRET": ENV["SECRET"], "PATH": ""},
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert "endpoints.0.retries" in proc.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert usage.returncode == 2


def test_example_config_is_valid() -> None:
    settings = load_settings(
        ROOT / "config" / "example.yaml",
        ENV | {"HR_WEBHOOK_SECRET": ENV["SECRET"], "STACKONE_API_KEY": "k"},
    )
    assert settings.endpoints[0].events == ["assignment.completed"]
