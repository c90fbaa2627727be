"""The docker-compose stack, checked without a container engine (CI has none).

``docker-compose config`` (Debian's docker-compose 1.29, which `scripts/test.sh` installs when
it can) validates the file against the Compose schema; the rest reads the files and holds
them to what the README's compose section promises: state on a named volume, the admin token
from a secret, the proxy waiting for stable only, Prometheus with the alert rules, a stop
grace period longer than the drain. The same topology runs as local processes in
``tests/e2e/test_compose_topology.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitproxy.config import parse_routing
from splitproxy.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = "/var/lib/splitproxy"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def proxy_service() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["splitproxy"]
    return service


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a host path or a volume name) of a service's volumes."""
    found = {}
    for mount in service["volumes"]:
        source, target, *_ = mount.split(":")
        found[target] = source
    return found


def seconds(duration: str) -> float:
    """A compose duration such as ``45s``, ``1m30s``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "docker-compose is not installed (scripts/test.sh installs Debian's package "
            "when it runs as root with apt-get)"
        )
    # the secret's file is the user's to create (it is not in git): give it one, as they would
    project = tmp_path / "project"
    shutil.copytree(REPO / "config", project / "config")
    shutil.copy(REPO / "docker-compose.yml", project)
    (project / "config" / "compose" / "admin-token").write_text("a-token\n")
    done = subprocess.run(
        [binary, "--project-directory", str(project), "-f", str(project / "docker-compose.yml"),
         "config"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    proxy = resolved["services"]["splitproxy"]
    assert proxy["depends_on"] == {"app-stable": {"condition": "service_healthy"}}
    assert set(resolved["volumes"]) == {"splitproxy-state", "prometheus-data", "redis-data"}
    assert resolved["secrets"]["splitproxy_admin_token"]["file"] == str(
        project / "config" / "compose" / "admin-token"
    )
    replicas = {"redis", "splitproxy-a", "splitproxy-b"}  # the "replicas" profile
    assert set(resolved["services"]) == {
        "splitproxy", "app-stable", "app-candidate", "prometheus", *replicas
    }  # fmt: skip
    for name in replicas:
        assert resolved["services"][name]["profiles"] == ["replicas"]


def test_the_replicas_profile_runs_two_proxies_on_one_redis_that_keeps_every_write() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert mounts(redis) == {"/data": "redis-data"}  # Redis's own state survives it
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command
    a, b = services["splitproxy-a"], services["splitproxy-b"]
    for replica in (a, b):
        env = replica["environment"]
        assert env["SPLITPROXY_STATE"] == "redis://redis:6379/0"
        assert "SPLITPROXY_STATE_DIR" not in env  # one state: Redis's
        assert replica["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert mounts(replica)["/etc/splitproxy"] == "./config/compose/routing"
        settings = Settings(state=env["SPLITPROXY_STATE"], admin=env["SPLITPROXY_ADMIN"])
        assert settings.state == "redis://redis:6379/0"
    published = [p.split(":")[-2] for r in (a, b) for p in r["ports"]]
    assert len(set(published)) == 4  # each replica its own host ports


def test_the_proxy_waits_for_stable_only_and_has_a_health_check() -> None:
    proxy = proxy_service()
    assert proxy["healthcheck"]["test"] == ["CMD", "splitproxy", "healthcheck"]
    # a broken candidate must not keep the service down: splitproxy holds it at 0 % itself
    assert proxy["depends_on"] == {"app-stable": {"condition": "service_healthy"}}
    assert "127.0.0.1:9901:9901" in proxy["ports"]


def test_the_candidate_is_held_back_by_the_proxy_until_it_passes_its_checks() -> None:
    """What replaces waiting for the candidate in compose: active health checks on the route
    and a rollout that waits for the candidate's readiness before its first step."""
    config = routing_config()
    (route,) = config.routes
    assert route.candidate is not None
    assert route.health is not None
    assert route.health.path == "/healthz"
    assert route.rollout is not None


def test_rollout_state_lives_on_a_named_volume() -> None:
    proxy = proxy_service()
    assert proxy["environment"]["SPLITPROXY_STATE_DIR"] == STATE_DIR
    volume = mounts(proxy)[STATE_DIR]
    assert volume in compose()["volumes"]  # a named volume, not a bind mount
    dockerfile = (REPO / "Dockerfile").read_text()
    # the image declares it and hands it to the non-root user before switching to it
    assert f'VOLUME ["{STATE_DIR}"]' in dockerfile
    assert f"SPLITPROXY_STATE_DIR={STATE_DIR}" in dockerfile
    owned = dockerfile.index(f"install -d -o splitproxy -g splitproxy -m 0750 {STATE_DIR}")
    assert owned < dockerfile.index("\nVOLUME ") < dockerfile.index("\nUSER splitproxy")


def test_the_admin_token_comes_from_a_compose_secret() -> None:
    proxy = proxy_service()
    env = proxy["environment"]
    assert "SPLITPROXY_ADMIN_TOKEN" not in env  # never the value itself in the file
    (secret,) = proxy["secrets"]
    assert env["SPLITPROXY_ADMIN_TOKEN_FILE"] == f"/run/secrets/{secret}"
    source = REPO / compose()["secrets"][secret]["file"]
    # kept out of git and out of the mounted routing directory
    assert source.parent == REPO / "config" / "compose"
    assert source.name in (source.parent / ".gitignore").read_text().split()
    routing_dir = REPO / mounts(proxy)["/etc/splitproxy"]
    assert source.parent != routing_dir
    assert f"**/{source.name}" in dockerignore()
    # the setting the variable names exists and is read from a file
    assert "admin_token_file" in Settings.model_fields


def test_prometheus_scrapes_the_proxy_with_the_alert_rules_loaded() -> None:
    prometheus = compose()["services"]["prometheus"]
    config_dir = mounts(prometheus)["/etc/prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((REPO / config_dir / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    admin_port = proxy_service()["environment"]["SPLITPROXY_ADMIN"].rsplit(":", 1)[1]
    assert static["targets"] == [f"splitproxy:{admin_port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for rules in config["rule_files"]:
        assert (REPO / config_dir / rules).is_file()
    assert "alerts.yml" in config["rule_files"]


def test_the_routing_file_is_mounted_as_a_directory_and_is_valid() -> None:
    proxy = proxy_service()
    host_dir = mounts(proxy)["/etc/splitproxy"]
    assert (REPO / host_dir).is_dir()
    assert "/etc/splitproxy:ro" in " ".join(proxy["volumes"])
    config_path = proxy["command"][proxy["command"].index("-c") + 1]
    assert config_path.startswith("/etc/splitproxy/")
    config = routing_config()
    services = set(compose()["services"])
    for route in config.routes:
        backends = [route.stable, *([route.candidate] if route.candidate else [])]
        for backend in backends:
            for url in backend.urls:
                assert url.split("//")[1].split(":")[0] in services


def routing_config() -> Any:
    proxy = proxy_service()
    host_dir = mounts(proxy)["/etc/splitproxy"]
    config_path = proxy["command"][proxy["command"].index("-c") + 1]
    return parse_routing((REPO / host_dir / config_path.rsplit("/", 1)[1]).read_text())


def test_signals_reach_splitproxy_and_the_drain_ends_before_the_kill() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["splitproxy"]' in dockerfile  # exec form: SIGTERM is not eaten by a shell
    proxy = proxy_service()
    env = proxy["environment"]
    defaults = Settings.model_fields
    delay = float(env.get("SPLITPROXY_DRAIN_DELAY", defaults["drain_delay"].default))
    timeout = float(env.get("SPLITPROXY_DRAIN_TIMEOUT", defaults["drain_timeout"].default))
    # the engine's SIGKILL after the grace period would cut the drain short
    assert seconds(proxy["stop_grace_period"]) > delay + timeout


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_build_context_leaves_the_virtualenv_and_the_tests_out() -> None:
    ignored = dockerignore()
    for entry in (".venv/", ".git/", "tests/", "benchmarks/", "**/__pycache__/", ".mypy_cache/"):
        assert entry in ignored
    # and nothing the image is built from is ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)
    sources = {s for line in copied for s in line.split()}
    assert sources == {"pyproject.toml", "README.md", "splitproxy"}
    assert not sources & {e.rstrip("/") for e in ignored}
