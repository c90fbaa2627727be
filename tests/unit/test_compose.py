"""The docker-compose example, checked statically (CI has no Docker engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from splitproxy.config import parse_routing

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_the_proxy_waits_for_both_versions_and_has_a_health_check() -> None:
    proxy = compose()["services"]["splitproxy"]
    assert proxy["healthcheck"]["test"] == ["CMD", "splitproxy", "healthcheck"]
    assert proxy["depends_on"] == {
        "app-stable": {"condition": "service_healthy"},
        "app-candidate": {"condition": "service_healthy"},
    }
    assert "127.0.0.1:9901:9901" in proxy["ports"]


def test_the_routing_file_is_mounted_as_a_directory_and_is_valid() -> None:
    proxy = compose()["services"]["splitproxy"]
    (mount,) = proxy["volumes"]
    host_dir, container_dir, _ = mount.split(":")
    assert (REPO / host_dir).is_dir()
    config_path = proxy["command"][proxy["command"].index("-c") + 1]
    assert config_path.startswith(container_dir + "/")
    name = config_path.rsplit("/", 1)[1]
    config = parse_routing((REPO / host_dir / name).read_text())
    services = set(compose()["services"])
    for route in config.routes:
        backends = [route.stable, *([route.candidate] if route.candidate else [])]
        for backend in backends:
            for url in backend.urls:
                assert url.split("//")[1].split(":")[0] in services


def test_signals_reach_splitproxy() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["splitproxy"]' in dockerfile  # exec form: SIGTERM is not eaten by a shell
    stop = compose()["services"]["splitproxy"]["stop_grace_period"]
    assert int(stop.rstrip("s")) > 10  # docker's default kill after 10 s would cut the drain
