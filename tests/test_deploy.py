"""The deployment files agree with the code: the CLI, the config loader, the metrics, the image.

Fast and offline: no network, no docker, no cluster. Only files are read and parsed.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.config import Settings, load_settings
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "lms-webhooks-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"

ENV = {
    "STACKONE_API_KEY": "k",
    "HR_WEBHOOK_SECRET": "whsec_" + base64.b64encode(bytes(range(24))).decode(),
    "ADMIN_TOKEN": "t",
    "REDIS_URL": "redis://redis:6379/0",
    "STACKONE_BASE_URL": "http://simulator:8090",
    "STACKONE_ACCOUNT_ID": "acc_1",
}

# ---------------------------------------------------------------- helpers


def _docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for path in sorted(K8S.glob("*.yaml"))
        for d in _docs(path)
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''} under {K8S}, found {len(found)}"
    return found[0]


def _deployment() -> dict[str, Any]:
    return _k8s("Deployment", "lms-webhooks")


def _container() -> dict[str, Any]:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _configmap_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(_k8s("ConfigMap", "lms-webhooks-config")["data"]["config.yaml"], "utf-8")
    return path


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [ins.strip() for ins in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if ins]


def _instruction(name: str) -> list[str]:
    return [ins[len(name) :].strip() for ins in _dockerfile() if ins.split()[0].upper() == name]


def _exec_form(name: str) -> list[str]:
    values = _instruction(name)
    assert values, f"the Dockerfile has no {name}"
    form = json.loads(values[-1])  # the last one wins
    assert isinstance(form, list) and all(isinstance(a, str) for a in form), form
    return form


def _parses(args: list[str]) -> None:
    try:
        build_parser().parse_args(args)
    except SystemExit as e:  # argparse exits on bad arguments
        pytest.fail(f"the CLI rejects {args!r} (exit {e.code})")


def _known_metric_names() -> set[str]:
    registry = Metrics().registry
    names = set(registry._names_to_collectors)  # includes _total, _bucket, _count, _sum, ...
    for family in registry.collect():
        names.add(family.name)
    return names


_PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group().lower() not in _PROMQL_KEYWORDS:
            names.add(m.group())
    return names


def _alert_rules() -> list[dict[str, Any]]:
    (doc,) = _docs(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # inside rows
    return panels


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def _compose() -> dict[str, Any]:
    (doc,) = _docs(COMPOSE)
    return doc


def _compose_defaults(value: str) -> str:
    """docker compose's ${VAR:-default}, with nothing set in the environment."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _listen_port(settings: Settings) -> int:
    return settings.http.port


# ---------------------------------------------------------------- every file parses


def test_every_yaml_under_deploy_parses() -> None:
    files = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
    assert len(files) >= 9, files
    for path in files:
        assert _docs(path), f"{path} is empty"


def test_kubernetes_manifests_are_namespace_agnostic_and_well_formed() -> None:
    expected = {
        "configmap.yaml",
        "secret.example.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "redis.yaml",
    }
    assert expected <= {p.name for p in K8S.glob("*.yaml")}
    for path in K8S.glob("*.yaml"):
        for doc in _docs(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            assert "namespace" not in doc["metadata"], f"{path}: {doc['kind']} sets a namespace"


def test_dashboard_is_valid_json() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    panels = _dashboard_panels()
    assert {p["type"] for p in panels} <= {"timeseries", "stat", "row"}
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets") and all(t.get("expr") for t in panel["targets"]), panel


# ---------------------------------------------------------------- the image and the CLI


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    assert _exec_form("ENTRYPOINT") == ["lms-webhooks"]
    assert "lms-webhooks" in scripts


def test_dockerfile_cmd_is_accepted_by_the_cli() -> None:
    cmd = _exec_form("CMD")
    _parses(cmd)
    assert build_parser().parse_args(cmd).command == "run"


def test_deployment_args_are_the_image_cmd_and_accepted_by_the_cli() -> None:
    container = _container()
    # No `command`: the image's ENTRYPOINT (`lms-webhooks`) runs; or the same one spelled out.
    assert container.get("command", _exec_form("ENTRYPOINT")) == _exec_form("ENTRYPOINT")
    args = container["args"]
    _parses(args)
    assert args == _exec_form("CMD")


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    users = _instruction("USER")
    assert users, "the Dockerfile sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    uid = _k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user == str(uid) or re.search(rf"--uid {uid}\b", "\n".join(_dockerfile()))
    (check,) = _instruction("HEALTHCHECK")
    default_config = load_settings(ROOT / "config" / "example.yaml", env=ENV)
    assert f":{_listen_port(default_config)}/healthz" in check, check


def test_dockerignore_exists_and_keeps_what_the_build_copies() -> None:
    ignore = ROOT / ".dockerignore"
    assert ignore.is_file()
    patterns = {
        ln.strip().rstrip("/")
        for ln in ignore.read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for copy in _instruction("COPY"):
        words = shlex.split(copy)
        if any(w.startswith("--from") for w in words):
            continue
        for source in [w for w in words if not w.startswith("--")][:-1]:
            top = source.split("/")[0]
            assert source not in patterns and top not in patterns, f".dockerignore drops {source}"


# ---------------------------------------------------------------- configs load


def test_configmap_config_loads(tmp_path: Path) -> None:
    settings = load_settings(_configmap_config(tmp_path), env=ENV)
    assert settings.redis_url == ENV["REDIS_URL"]
    assert settings.http.admin_token is not None
    assert settings.endpoints, "the ConfigMap's config has no endpoint"


def test_configmap_config_loads_with_the_example_secret(tmp_path: Path) -> None:
    """The Secret's placeholders are valid values: in particular a usable whsec_ secret."""
    secret = _k8s("Secret", "lms-webhooks-secrets")["stringData"]
    assert {"STACKONE_API_KEY", "HR_WEBHOOK_SECRET", "ADMIN_TOKEN", "REDIS_URL"} <= secret.keys()
    key = base64.b64decode(secret["HR_WEBHOOK_SECRET"].removeprefix("whsec_"), validate=True)
    assert secret["HR_WEBHOOK_SECRET"].startswith("whsec_") and len(key) >= 16
    load_settings(_configmap_config(tmp_path), env=dict(secret))


def test_configmap_variables_without_default_are_in_the_secret(tmp_path: Path) -> None:
    text = _configmap_config(tmp_path).read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{(\w+)\}", text))
    assert {"STACKONE_API_KEY", "HR_WEBHOOK_SECRET", "ADMIN_TOKEN", "REDIS_URL"} <= required
    assert required <= _k8s("Secret", "lms-webhooks-secrets")["stringData"].keys()


def test_compose_config_loads() -> None:
    load_settings(DEPLOY / "compose-config.yaml", env=ENV)


def test_compose_config_loads_with_the_compose_environment() -> None:
    service = _compose()["services"]["lms-webhooks"]
    env = {k: _compose_defaults(str(v)) for k, v in service["environment"].items()}
    settings = load_settings(DEPLOY / "compose-config.yaml", env=env)
    assert settings.redis_url.startswith("redis://redis:")


def test_example_config_loads() -> None:
    load_settings(ROOT / "config" / "example.yaml", env=ENV)


# ---------------------------------------------------------------- the Kubernetes wiring


def test_deployment_shape() -> None:
    deployment = _deployment()
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = _container()
    assert spec["replicas"] == 2
    assert pod["terminationGracePeriodSeconds"] >= 20  # the service exits within 15 s
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    assert {"secretRef": {"name": "lms-webhooks-secrets"}} in container["envFrom"]


def test_deployment_mounts_the_configmap_where_the_args_point() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    args = build_parser().parse_args(_container()["args"])
    config_path = Path(args.config)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [
        m for m in _container()["volumeMounts"] if Path(m["mountPath"]) == config_path.parent
    ]
    assert volumes[mount["name"]]["configMap"]["name"] == "lms-webhooks-config"
    assert config_path.name in _k8s("ConfigMap", "lms-webhooks-config")["data"]


def test_probes_and_ports_match_the_configured_listen_port(tmp_path: Path) -> None:
    port = _listen_port(load_settings(_configmap_config(tmp_path), env=ENV))
    container = _container()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["http"] == port
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    service = _k8s("Service", "lms-webhooks")
    (service_port,) = service["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["port"] == port
    assert service_port["targetPort"] in ("http", port)


def test_service_and_pdb_select_the_deployment_pods_only() -> None:
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    redis_labels = _k8s("StatefulSet", "redis")["spec"]["template"]["metadata"]["labels"]
    service_selector = _k8s("Service", "lms-webhooks")["spec"]["selector"]
    pdb = _k8s("PodDisruptionBudget")
    pdb_selector = pdb["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1
    for selector in (
        service_selector,
        pdb_selector,
        _deployment()["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
        assert not selector.items() <= redis_labels.items()


# ---------------------------------------------------------------- Redis keeps its data


def _has_aof(argv: list[str]) -> bool:
    argv = [str(a) for a in argv]
    return any(a == "--appendonly" and b == "yes" for a, b in itertools.pairwise(argv))


def test_compose_redis_runs_with_aof() -> None:
    command = _compose()["services"]["redis"]["command"]
    assert _has_aof(command if isinstance(command, list) else shlex.split(command))


def test_kubernetes_redis_runs_with_aof_on_a_volume() -> None:
    statefulset = _k8s("StatefulSet", "redis")
    assert statefulset["spec"]["replicas"] == 1
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert _has_aof([*container.get("command", []), *container.get("args", [])])
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    assert _k8s("Service", "redis")["spec"]["ports"][0]["port"] == 6379
    secret = _k8s("Secret", "lms-webhooks-secrets")["stringData"]
    assert secret["REDIS_URL"].startswith("redis://redis:6379/")


# ---------------------------------------------------------------- compose


def test_compose_service_uses_the_image_default_command() -> None:
    services = _compose()["services"]
    service = services["lms-webhooks"]
    command = service.get("command", _exec_form("CMD"))
    assert command == _exec_form("CMD")
    config = build_parser().parse_args(command).config
    assert any(str(v).split(":")[1] == config for v in service["volumes"])
    for name in ("simulator", "receiver"):
        assert services[name]["profiles"] == ["sim"]
        _parses([_compose_defaults(str(a)) for a in services[name]["command"]])


# ---------------------------------------------------------------- metrics exist


def test_promql_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, outcome) (rate(a_bucket{x="y",z=~"$v"}'
        '[$__rate_interval]))) / ignoring(q) b_total offset 5m > 0.1 or absent(up{job="j"})'
        " unless max(c) by (d) == 1"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "up", "c"}


def test_alert_rules() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {
        "LmsWebhooksDeadLettersGrowing",
        "LmsWebhooksEndpointDisabled",
        "LmsWebhooksEndpointPaused",
        "LmsWebhooksUpstream429Rate",
        "LmsWebhooksPollLag",
        "LmsWebhooksQueueAge",
        "LmsWebhooksAccountsBackedOff",
        "LmsWebhooksNotReady",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "0s")), rule["alert"]


def test_alert_metrics_exist() -> None:
    known = _known_metric_names() | {"up"}  # `up`: Prometheus' own scrape health
    for rule in _alert_rules():
        used = promql_metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"


def test_dashboard_metrics_exist() -> None:
    known = _known_metric_names()
    exprs = _dashboard_exprs()
    for expr in exprs:
        used = promql_metric_names(expr)
        assert used and used <= known, f"{expr}: unknown metrics {sorted(used - known)}"
    # Names anywhere else in the dashboard (template variables, descriptions) too.
    for name in re.findall(r"lms_webhooks_\w+", DASHBOARD.read_text(encoding="utf-8")):
        assert name in known, name


def test_dashboard_covers_the_service_metrics() -> None:
    used = set().union(*(promql_metric_names(e) for e in _dashboard_exprs()))
    for name in (
        "lms_webhooks_upstream_requests_total",
        "lms_webhooks_throttle_wait_seconds_total",
        "lms_webhooks_poll_duration_seconds_bucket",
        "lms_webhooks_events_total",
        "lms_webhooks_deliveries_total",
        "lms_webhooks_delivery_latency_seconds_bucket",
        "lms_webhooks_queue_depth",
        "lms_webhooks_queue_oldest_age_seconds",
        "lms_webhooks_dead_letters",
        "lms_webhooks_endpoint_state",
        "lms_webhooks_poll_lag_seconds",
        "lms_webhooks_poll_failures_total",
        "lms_webhooks_records_skipped_total",
        "lms_webhooks_accounts_backed_off",
    ):
        assert name in used, f"the dashboard does not show {name}"


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions by stage; [0]: those before the first FROM."""
    stages: list[list[str]] = [[]]
    for ins in _dockerfile():
        if ins.split()[0].upper() == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _make_recipe(target: str) -> str:
    """A Makefile target's recipe, continuation lines joined."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
    assert match, f"the Makefile has no {target} target"
    return match.group(1)


def test_the_image_is_debian_with_its_python_and_a_lean_final_stage() -> None:
    """A base this machine can make (Docker Hub is out of reach): every stage FROM ${BASE},
    Debian's python3; the final stage has no venv module, no build tools, no apt lists."""
    preamble, build, final = _stages()
    assert any(re.fullmatch(r"ARG BASE=debian:bookworm-slim", ins) for ins in preamble)
    assert build[0] == "FROM ${BASE} AS build" and final[0] == "FROM ${BASE}"
    build_text, final_text = " ".join(build), " ".join(final)
    assert "apt-get install -y --no-install-recommends python3 python3-venv" in build_text
    assert "apt-get install -y --no-install-recommends python3 " in final_text
    for tool in ("python3-venv", "python3-pip", "build-essential", "gcc", "pip install"):
        assert tool not in final_text, f"the final stage installs {tool}"
    for stage in (build_text, final_text):
        assert "rm -rf /var/lib/apt/lists/*" in stage
    assert "COPY --from=build /opt/venv /opt/venv" in final_text


def test_the_build_ca_is_lent_to_pip_not_baked_into_the_image() -> None:
    _, build, final = _stages()
    assert "ARG PIP_CERT" in build, "pip's CA (PIP_CERT) is a build-stage argument"
    assert not any("PIP_CERT" in ins or "/mnt" in ins for ins in final)
    assert not any(
        re.search(r"\.(crt|pem)\b", ins) for ins in build + final if ins.startswith(("COPY", "ADD"))
    )
    recipe = _make_recipe("image")
    assert (
        "--volume $(dir $(HOST_CA)):/mnt:ro --build-arg PIP_CERT=/mnt/$(notdir $(HOST_CA))"
        in recipe
    )
    # --format docker keeps the HEALTHCHECK; chroot isolation needs no daemon
    assert "buildah bud --format docker --isolation chroot" in recipe


def test_the_docs_build_the_image_with_the_makefile_command() -> None:
    """docs/operating.md's `buildah bud` is the one `make image` runs, with the Makefile's
    values; the README leads there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    operating = (ROOT / "docs/operating.md").read_text(encoding="utf-8")
    block = re.search(r"buildah bud .*?-t lms-webhooks \.", operating.replace("\\\n", " "), re.S)
    assert block, "docs/operating.md does not show the buildah bud command"
    make = re.sub(r"\$\(if \$\(wildcard \$\(HOST_CA\)\),(.*?)\)\s", r"\1 ", _make_recipe("image"))
    values = {"HOST_CA": "/etc/ssl/certs/ca-certificates.crt", "IMAGE": "lms-webhooks"}
    values["BASE_IMAGE"] = "localhost/debian:bookworm-slim"
    make = re.sub(r"\$\(dir \$\(HOST_CA\)\)", "/etc/ssl/certs/", make)
    make = re.sub(r"\$\(notdir \$\(HOST_CA\)\)", "ca-certificates.crt", make)
    make = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], make)
    assert " ".join(block.group().split()) in " ".join(make.split())
    assert "make image" in readme and "make image-test" in readme
    assert "make image" in operating and "make image-test" in operating


def test_the_image_installs_the_way_the_docs_say() -> None:
    readme = (ROOT / "README.md").read_text()
    operating = (ROOT / "docs/operating.md").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in readme and "pip install ." in operating
    assert "pip install --no-cache-dir ." in dockerfile  # the same install, without a cache
    assert "COPY pyproject.toml README.md" in dockerfile and "COPY service ./service" in dockerfile
