"""docker-compose.yml, the Dockerfile and the provisioning files, checked statically.

No Docker engine or Grafana runs here; these tests pin down what can be checked without them:
structure, pinned images, mounted paths that exist, a single published port on loopback,
healthchecks and dependencies, and that Prometheus accepts its configuration with our rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

SERVICES = {"redis", "churnwatch", "simulator", "prometheus", "alertmanager", "grafana"}
CHURNWATCH_SUBCOMMANDS = {"run", "simulate"}  # the entry points the brief names; see docs
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# A publisher with no endpoint to probe; nothing waits for it to be healthy.
WITHOUT_HEALTHCHECK = {"simulator"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, short or long syntax."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        result.append((source, target))
    return result


def _is_bind_mount(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def test_compose_declares_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.match(r"v?\d+\.\d+\.\d+", tag), (
            f"{name}: {image!r} not pinned"
        )


def test_grafana_image_matches_the_foundation_sdk(services: dict[str, dict[str, Any]]) -> None:
    sdk_version = version("grafana-foundation-sdk").split("!")[-1]  # "<build>!11.6.0"
    major_minor = ".".join(sdk_version.split(".")[:2])
    assert services["grafana"]["image"].startswith(f"grafana/grafana:{major_minor}.")


def test_expected_image_versions(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis"]["image"].startswith("redis:7.2.")
    assert services["prometheus"]["image"].startswith("prom/prometheus:v2.53.")
    assert services["alertmanager"]["image"] == "prom/alertmanager:v0.27.0"


def test_every_bind_mounted_path_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [
        (name, source)
        for name, service in services.items()
        for source, _ in _volumes(service)
        if _is_bind_mount(source) and not (ROOT / source).exists()
    ]
    assert not missing, f"bind-mounted paths missing from the repository: {missing}"


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in services.values()
        for source, _ in _volumes(service)
        if source and not _is_bind_mount(source)
    }
    assert used, "state should live in named volumes"
    assert used <= declared, f"undeclared named volumes {used - declared}"
    assert any(
        target == "/data" for source, target in _volumes(services["redis"]) if source in declared
    )


def test_only_grafana_publishes_a_port_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"grafana"}
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    for name, service in services.items():
        assert service.get("network_mode") != "host", name


def test_healthchecks_are_present(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in WITHOUT_HEALTHCHECK:
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "http://127.0.0.1:9464/metrics" in " ".join(
        services["churnwatch"]["healthcheck"]["test"]
    )


def test_dependencies_exist_and_wait_for_health(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on should name conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services and dependency != name, (name, dependency)
            assert spec["condition"] in DEPENDENCY_CONDITIONS, (name, dependency)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
    assert services["churnwatch"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis" in services["simulator"]["depends_on"]


def test_service_commands_are_real_entry_points(services: dict[str, dict[str, Any]]) -> None:
    # That the CLI accepts each command: tests/test_compose_commands.py.
    for name in ("churnwatch", "simulator"):
        service = services[name]
        command = _command(service)
        assert command[0] == "churnwatch" and command[1] in CHURNWATCH_SUBCOMMANDS, (name, command)
        assert service["build"] == "."
        assert service["environment"]["CHURNWATCH_REDIS_URL"] == "redis://redis:6379/0"
    assert _command(services["churnwatch"]) == [
        "churnwatch", "run", "--source", "redis", "--metrics-host", "0.0.0.0",
    ]  # fmt: skip
    assert _command(services["simulator"])[:3] == ["churnwatch", "simulate", "--publish"]
    # It publishes a finite history and exits 0: restarted after a failure only, a few times.
    assert services["simulator"]["restart"].startswith("on-failure")
    assert _command(services["redis"])[:3] == ["redis-server", "--appendonly", "yes"]


def test_grafana_admin_password_comes_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    environment = services["grafana"]["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GF_SECURITY_ADMIN_PASSWORD:?")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.search(r"^GF_SECURITY_ADMIN_PASSWORD=\S+", example, re.MULTILINE)


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(_volumes(services["grafana"]))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["folder"] == "churnwatch"
    assert mounts["./dashboards/json"] == provider["options"]["path"]


def test_datasources_have_the_fixed_uids() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yml").read_text())
    by_uid = {source["uid"]: source for source in provisioned["datasources"]}
    assert by_uid["churnwatch-prometheus"]["type"] == "prometheus"
    assert by_uid["churnwatch-prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["churnwatch-alertmanager"]["type"] == "alertmanager"
    assert by_uid["churnwatch-alertmanager"]["url"] == "http://alertmanager:9093"
    assert by_uid["churnwatch-alertmanager"]["jsonData"]["implementation"] == "prometheus"


def test_prometheus_scrapes_churnwatch_with_the_rules(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "churnwatch"]
    assert job["static_configs"][0]["targets"] == ["churnwatch:9464"]
    assert job["scrape_interval"] == "5s"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    mounts = dict(_volumes(services["prometheus"]))
    assert mounts["./metrics/rules"] == "/etc/prometheus/rules"
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    alertmanager_mounts = dict(_volumes(services["alertmanager"]))
    assert alertmanager_mounts["./metrics/alertmanager/alertmanager.yml"] == (
        "/etc/alertmanager/alertmanager.yml"
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH")
def test_promtool_accepts_the_config_and_the_mounted_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    # Where compose mounts metrics/rules, read them from the repository instead.
    config["rule_files"] = [str(ROOT / "metrics" / "rules" / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(local)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dockerfile_builds_a_non_root_image_running_the_monitor() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    (base,) = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert re.search(r"^RUN .*pip install \.", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r'^CMD \["churnwatch", "run"\]', text, re.MULTILINE)
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.MULTILINE):
        for path in source.split():
            if path != "README.md":  # pyproject's readme, written with the README
                assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
