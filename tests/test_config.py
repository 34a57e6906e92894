"""Config: interpolation, durations, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.cli import main
from service.config import (
    fill,
    interpolate,
    load_settings,
    parse_duration,
    parse_settings,
    settings_json_schema,
)
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
    assert settings.delivery.log_retention == 7 * 86400.0
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
        # never an assignment event: no endpoint subscribes to test sends
        (
            ("secret: ${SECRET}", "secret: ${SECRET}\n    events: [webhook.test]"),
            "endpoints.0.events",
        ),
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


# ------------------------------------------------- hostile files: what the loader refuses


def check_config_exit(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    """check-config in-process on `text`: exit 2, and the error (stderr) is returned."""
    path = write(tmp_path, text)
    with pytest.MonkeyPatch.context() as env:
        for name, value in ENV.items():
            env.setenv(name, value)
        assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert ENV["KEY"] not in err and ENV["SECRET"] not in err
    return err


def alias_bomb(indent: str = "") -> str:
    """Nine lines of aliases, ten each: 10^9 values once anything copies the shared nodes."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    return "".join(f"{indent}{level}\n" for level in levels)


# MINIMAL's endpoint anchored and shared whole (a merge key) and in part; accounts share users
SHARED = MINIMAL.replace(
    "  - id: hr\n", "  - &hr\n    id: hr\n    events: &events [assignment.completed]\n"
) + (
    "  - <<: *hr\n    id: crm\n    url: https://crm.example.com/hooks\n"
    "  - id: audit\n    url: https://audit.example.com/hooks\n    secret: ${SECRET}\n"
    "    events: *events\n"
    "accounts:\n"
    "  - account_id: acme\n    users: &users [u1, u2]\n"
    "  - account_id: globex\n    users: *users\n"
)


def test_anchors_aliases_and_merge_keys_share_values(tmp_path: Path) -> None:
    """What `yaml.safe_dump` writes for a shared list, and what compose files do."""
    settings = load_settings(write(tmp_path, SHARED), ENV)
    assert [a.users for a in settings.accounts] == [["u1", "u2"], ["u1", "u2"]]
    hr, crm, audit = settings.endpoints
    assert (crm.id, crm.url) == ("crm", "https://crm.example.com/hooks")
    assert crm.secret[0].get_secret_value() == ENV["SECRET"]  # `${SECRET}` filled in the copy
    assert hr.events == crm.events == audit.events == ["assignment.completed"]


def test_alias_bomb_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Aliases are measured before anything copies them: the expansion is refused, naming
    the alias that passes the bound and its anchor."""
    err = check_config_exit(tmp_path, MINIMAL + "bomb:\n" + alias_bomb("  "), capsys)
    assert "bomb.a5.7: aliases expand the document by more than 1,000,000 values" in err
    assert "*a4, anchored on line 14" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # an alias inside its own anchor: a loop, not a value
        ("loop: &l [a, *l]\n", "loop.1: an alias inside the value it names (*l"),
        # each written part is shallow, but the alias puts one inside the other
        (
            "a: &d " + "[" * 20 + "]" * 20 + "\nb: " + "[" * 20 + "*d" + "]" * 20 + "\n",
            "nested deeper than 32 levels through *d",
        ),
    ],
)
def test_aliases_that_loop_or_nest_too_deep_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    assert expected in check_config_exit(tmp_path, MINIMAL + text, capsys)


def test_alias_bomb_check_config_returns_at_once(tmp_path: Path) -> None:
    """The whole command, as a user runs it: exit 2 in seconds, not minutes and gigabytes."""
    bad = write(tmp_path, MINIMAL + alias_bomb())
    proc = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        env={**ENV, "PATH": ""},
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "aliases expand the document" in proc.stderr


def test_deep_nesting_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for depth in (40, 500, 50_000):
        err = check_config_exit(tmp_path, MINIMAL + "deep: " + "[" * depth + "]" * depth, capsys)
        assert "nested deeper than" in err and "line 9" in err


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (MINIMAL + "polling:\n  interval: 5m\n  interval: 1s\n", "polling.interval"),
        (MINIMAL + "stackone:\n  api_key: other\n", "stackone"),
        (
            MINIMAL.replace("    url:", "    url: https://x.example.com\n    url:"),
            "endpoints.0.url",
        ),
        # keys from the environment collide only once filled in
        (MINIMAL + "log:\n  ${A}: info\n  ${B}: debug\n", "log.level"),
    ],
)
def test_duplicate_keys_are_errors_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, path: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), ENV | {"A": "level", "B": "level"})
    assert caught.value.path == path and "duplicate key" in caught.value.message
    assert f"{path}: duplicate key" in check_config_exit(
        tmp_path, text.replace("${A}", "level").replace("${B}", "level"), capsys
    )


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    """A 49 MB config ran for minutes; above the cap the file is refused before parsing."""
    padding = "# " + "x" * 1021 + "\n"  # 1 KiB
    big = write(tmp_path, MINIMAL + padding * (5 * 1024))  # 5 MiB of comments
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_settings(big, ENV)
    # just below the cap: read as always
    ok = write(tmp_path, MINIMAL + padding * (4 * 1024 - 1))
    assert load_settings(ok, ENV).endpoints[0].id == "hr"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"log:\n  level: \xff\xfe\n", "not UTF-8"),
        (b"log:\n  level: 2024-13-45\n", "line 10"),  # an impossible date
        (b"log:\n  level: !!int nope\n", "line 10"),
        (b"log:\n  level: !!timestamp nope\n", "line 10"),
        (b"log:\n  level: 2024-01-01 99:00:00\n", "line 10"),
    ],
)
def test_unreadable_values_are_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes, problem: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(MINIMAL.encode() + text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, ENV)
    assert problem in caught.value.message


# ------------------------------------------------------- interpolation cannot be spoofed


@pytest.mark.parametrize("literal", ["__lms_webhooks_env_0__", "__lms_webhooks_env_99__"])
def test_placeholder_text_in_the_file_stays_literal(tmp_path: Path, literal: str) -> None:
    """Values go back in through placeholders; plain text that looks like one must not be
    replaced by a variable's value (here the API key) nor break the load."""
    text = MINIMAL + f"accounts:\n  - account_id: x{literal}\n    users: [{literal}]\n"
    settings = load_settings(write(tmp_path, text), ENV)
    assert settings.accounts[0].account_id == f"x{literal}"
    assert settings.accounts[0].users == [literal]
    assert settings.stackone.api_key.get_secret_value() == ENV["KEY"]


def test_placeholders_differ_on_every_load() -> None:
    first, _ = interpolate("k: ${A}", {"A": "1"})
    second, _ = interpolate("k: ${A}", {"A": "1"})
    assert first != second


def test_a_value_that_looks_like_a_placeholder_stays_itself(tmp_path: Path) -> None:
    text, values = interpolate("a: ${A}\nb: ${B}\n", {"A": "x", "B": "y"})
    token_of_b = text.split("b: ")[1].strip()
    # A's value is B's placeholder: it is put in as text, never replaced again
    settings = load_settings(
        write(tmp_path, MINIMAL.replace("${KEY}", "${A}") + "accounts:\n  - account_id: ${B}\n"),
        ENV | {"A": token_of_b, "B": "acc"},
    )
    assert settings.stackone.api_key.get_secret_value() == token_of_b
    assert fill("b: " + token_of_b, values) == "b: y"


def test_empty_required_variable_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, MINIMAL), ENV | {"KEY": ""})
    assert caught.value.path == "KEY" and "empty" in caught.value.message
    # `${VAR:-}` says so when empty is meant
    settings = load_settings(
        write(tmp_path, MINIMAL + "http:\n  admin_token: ${TOKEN:-}\n"), ENV | {"TOKEN": ""}
    )
    assert settings.http.admin_token is None


# ------------------------------------------- every duration and count within a finite range

API = "  api_key: ${KEY}"
HOOK = "    secret: ${SECRET}"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ((API, f"{API}\n  request_timeout: 0"), "stackone.request_timeout"),  # 0 = no timeout
        ((API, f"{API}\n  request_timeout: .inf"), "stackone.request_timeout"),
        ((API, f"{API}\n  request_timeout: 2h"), "stackone.request_timeout"),
        (
            (API, f"{API}\n  max_requests_per_minute: 1000000000"),
            "stackone.max_requests_per_minute",
        ),
        ((API, f"{API}\n  max_pages: 1000000000"), "stackone.max_pages"),
        ((HOOK, f"{HOOK}\n    timeout: 0"), "endpoints.0.timeout"),
        ((HOOK, f"{HOOK}\n    timeout: .inf"), "endpoints.0.timeout"),
        ((HOOK, f"{HOOK}\n    timeout: .nan"), "endpoints.0.timeout"),
        ((HOOK, f"{HOOK}\n    concurrency: 1000000"), "endpoints.0.concurrency"),
        ((HOOK, f"{HOOK}\n    max_per_second: .inf"), "endpoints.0.max_per_second"),
        ((HOOK, f"{HOOK}\n    max_per_second: .nan"), "endpoints.0.max_per_second"),
        ((HOOK, f"{HOOK}\n    max_per_second: 0.0001"), "endpoints.0.max_per_second"),
        (("", "polling:\n  interval: .nan"), "polling.interval"),
        (("", "polling:\n  interval: .inf"), "polling.interval"),
        (("", "polling:\n  interval: 1.0e+308"), "polling.interval"),
        (("", "polling:\n  interval: 31d"), "polling.interval"),
        (("", "polling:\n  interval: 10ms"), "polling.interval"),
        (("", "polling:\n  interval: " + "9" * 400), "polling.interval"),  # an int float() refuses
        (("", "polling:\n  interval: " + "9" * 400 + "s"), "polling.interval"),
        (("", "polling:\n  overlap: .nan"), "polling.overlap"),
        (("", "polling:\n  full_resync_interval: -.inf"), "polling.full_resync_interval"),
        (("", "polling:\n  concurrency: 1000000000"), "polling.concurrency"),
        (("", "delivery:\n  retry_schedule: [1s, .nan]"), "delivery.retry_schedule.1"),
        (("", "delivery:\n  retry_schedule: [1s, 1e999]"), "delivery.retry_schedule.1"),
        (("", "delivery:\n  retry_schedule: [" + "1s, " * 101 + "]"), "delivery.retry_schedule"),
        (("", "delivery:\n  disable_after: .nan"), "delivery.disable_after"),
        (("", "delivery:\n  disable_after: 400d"), "delivery.disable_after"),
        (("", "delivery:\n  log_retention: 30s"), "delivery.log_retention"),
        (("", "delivery:\n  log_retention: 400d"), "delivery.log_retention"),
        (("", "delivery:\n  log_retention: .nan"), "delivery.log_retention"),
        (("", "delivery:\n  log_max_per_endpoint: 0"), "delivery.log_max_per_endpoint"),
        (("", "delivery:\n  log_max_per_endpoint: 1e12"), "delivery.log_max_per_endpoint"),
    ],
)
def test_absurd_values_are_errors_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], path: str
) -> None:
    """Each passed check-config and then broke the service silently (no poll ever due, a
    dispatch error every second, gigabytes of tasks, a timeout of 0 meaning none)."""
    old, new = change
    text = MINIMAL.replace(old, new) if old else MINIMAL + new + "\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), ENV)
    assert caught.value.path == path
    assert f"{path}: " in check_config_exit(tmp_path, text, capsys)


@pytest.mark.parametrize(
    ("key", "value", "seconds"),
    [
        ("polling.interval", "100ms", 0.1),
        ("polling.interval", "30d", 30 * 86400.0),
        ("polling.overlap", "0", 0.0),
        ("polling.full_resync_interval", 0, 0.0),  # every poll a full read
        ("stackone.request_timeout", "1h", 3600.0),
        ("delivery.disable_after", "365d", 365 * 86400.0),
        ("delivery.log_retention", "1m", 60.0),
        ("delivery.log_retention", "365d", 365 * 86400.0),
    ],
)
def test_range_ends_are_valid(key: str, value: object, seconds: float) -> None:
    section, name = key.split(".")
    data: dict[str, dict[str, object]] = {"stackone": {"api_key": "k"}}
    data.setdefault(section, {})[name] = value
    settings = parse_settings(data)
    assert getattr(getattr(settings, section), name) == seconds


def test_schema_states_the_ranges() -> None:
    props = settings_json_schema()["$defs"]
    interval = props["PollingSettings"]["properties"]["interval"]
    assert {"type": "number", "minimum": 0.1, "maximum": 30 * 86400} in interval["anyOf"]
    assert "100ms" in interval["description"] and "30d" in interval["description"]
    timeout = props["EndpointSettings"]["properties"]["timeout"]
    assert {"type": "number", "exclusiveMinimum": 0, "maximum": 3600} in timeout["anyOf"]
    assert props["EndpointSettings"]["properties"]["concurrency"]["maximum"] == 1000


@pytest.mark.parametrize(
    ("users", "path"),
    [
        ('[u1, u1, ""]', "accounts.0.users.1"),  # passed as three users
        ('[u1, ""]', "accounts.0.users.1"),
        ("[u1, ..]", "accounts.0.users.1"),  # requested as the whole account's route
        ('["."]', "accounts.0.users.0"),
        (f"[u1, {'x' * 257}]", "accounts.0.users.1"),
        ("[7]", "accounts.0.users"),  # a number is not an id (pydantic's own message)
    ],
)
def test_user_lists_refuse_repeated_and_unusable_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], users: str, path: str
) -> None:
    text = MINIMAL + f"accounts:\n  - account_id: a1\n    users: {users}\n"
    assert f"{path}" in check_config_exit(tmp_path, text, capsys)
    document = yaml.safe_load(text.replace("${KEY}", "k").replace("${SECRET}", ENV["SECRET"]))
    with pytest.raises(jsonschema.ValidationError):  # the schema says so too
        jsonschema.validate(document, settings_json_schema())


def test_user_ids_up_to_the_bound_are_valid() -> None:
    users = ["x" * 256, "...", "a..b", ".hidden"]  # only `.` and `..` are dot segments
    settings = parse_settings(
        {"stackone": {"api_key": "k"}, "accounts": [{"account_id": "a1", "users": users}]}
    )
    assert settings.accounts[0].listed_users == users


def test_full_resync_interval_zero_is_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`0` (every read a full one, as the docs say) ended check-config and `run` with a
    ZeroDivisionError traceback."""
    monkeypatch.setenv("KEY", "k")
    monkeypatch.setenv("SECRET", ENV["SECRET"])
    text = MINIMAL + (
        "polling:\n  full_resync_interval: 0\n"
        "accounts:\n  - account_id: a1\n    users: [u1, u2]\n"
        "  - account_id: a2\n    users: all\n    strategy: account\n"
    )
    assert main(["check-config", "--config", str(write(tmp_path, text))]) == 0
    assert "budget: " in capsys.readouterr().out


# --------------------------------------------------------------------------------- tracing

TRACING = "tracing:\n  endpoint: http://collector:4318/v1/traces\n"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("  bogus: 1\n", "tracing.bogus"),
        ("  sample_ratio: 1.5\n", "tracing.sample_ratio"),
        ("  sample_ratio: .nan\n", "tracing.sample_ratio"),
        ("  export_interval: 1ms\n", "tracing.export_interval"),
        ("  timeout: 0\n", "tracing.timeout"),
        ("  headers:\n    'bad name': x\n", "tracing.headers"),
        ('  headers:\n    x-key: "${KEY}\\n"\n', "tracing.headers"),  # CR/LF split a request
    ],
)
def test_tracing_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, path: str
) -> None:
    text = MINIMAL + TRACING + extra
    assert f"{path}: " in check_config_exit(tmp_path, text, capsys)


@pytest.mark.parametrize("url", ["collector:4318", "ftp://collector/v1/traces", "http://:1/x"])
def test_a_tracing_endpoint_is_an_http_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    text = MINIMAL + f"tracing:\n  endpoint: {url}\n"
    assert "tracing.endpoint: " in check_config_exit(tmp_path, text, capsys)


def test_tracing_is_off_unless_an_endpoint_is_set_and_its_headers_are_secrets(
    tmp_path: Path,
) -> None:
    assert not load_settings(write(tmp_path, MINIMAL), ENV).tracing.enabled
    # `${VAR:-}` unset: empty, which is off (the same config serves with and without)
    text = MINIMAL + "tracing:\n  endpoint: ${OTLP_URL:-}\n  headers:\n    x-key: ${KEY}\n"
    settings = load_settings(write(tmp_path, text), ENV)
    assert not settings.tracing.enabled
    assert ENV["KEY"] in settings.secret_values()  # redacted from every log line
    assert ENV["KEY"] not in repr(settings)
    on = load_settings(write(tmp_path, text), {**ENV, "OTLP_URL": "https://otel.example/v1/t"})
    assert on.tracing.enabled and on.tracing.endpoint == "https://otel.example/v1/t"
