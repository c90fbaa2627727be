"""The first reload after start knows the serving file's routes as written, as later ones do:
only the routes a new file writes differently are validated again."""

from __future__ import annotations

from pathlib import Path

from splitproxy.config import read_routing_file
from splitproxy.dataplane.state import RuntimeState
from splitproxy.reloadseed import known_at_start

FILE = """\
routes:
  - name: a
    stable: http://127.0.0.1:9
  - name: b
    match: {path_prefix: /b}
    stable: http://127.0.0.1:10
"""


async def test_the_serving_files_routes_are_known_after_start(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(FILE)
    config, digest = read_routing_file(path)
    state = RuntimeState()
    state.load(config, digest, 0.0)
    known = await known_at_start(state, path)
    assert sorted(route.name for route in known.values()) == ["a", "b"]
    assert all(route is config.route(route.name) for route in known.values())


async def test_a_file_changed_since_it_was_loaded_is_not_taken_for_it(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(FILE)
    config, digest = read_routing_file(path)
    state = RuntimeState()
    state.load(config, digest, 0.0)
    path.write_text(FILE.replace("10", "11"))  # the reload this causes validates it in full
    assert await known_at_start(state, path) == {}
    path.unlink()
    assert await known_at_start(state, path) == {}
    assert await known_at_start(RuntimeState(), path) == {}
