"""Hot reload through the real command line: the start-up refusal says what a reload says,
and SIGHUP reaches the reload path of a running ``splitproxy serve``."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

from tests.e2e.proc import Proxy, cli, serving

GOOD = "routes:\n  - {name: shop, stable: 'http://127.0.0.1:9'}\n"
BAD = "routes:\n  - {name: shop, stable: 'http://127.0.0.1:9', weight: 150, colour: red}\n"
BAD_YAML = "routes:\n  - name: shop\n    stable: [http://127.0.0.1:9\n"


def _wait_for(proxy: Proxy, pattern: str, within: float = 15.0) -> re.Match[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        match = re.search(pattern, proxy.output(), re.M)
        if match is not None:
            return match
        assert proxy.process.poll() is None, f"splitproxy exited:\n{proxy.output()}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not logged within {within}s:\n{proxy.output()}")


def _wait_until_caught(proxy: Proxy, sig: signal.Signals, within: float = 15.0) -> None:
    """Wait until the process has its handler for ``sig`` (``SigCgt`` in /proc/PID/status).

    The proxy logs "listening" and then installs its handlers: a signal sent between the two
    (a loaded machine can pause the process right there) met the default action and killed it.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = Path(f"/proc/{proxy.process.pid}/status").read_text()
        found = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
        assert found is not None, status
        if int(found[1], 16) >> (sig - 1) & 1:
            return
        assert proxy.process.poll() is None, f"splitproxy exited:\n{proxy.output()}"
        time.sleep(0.02)
    raise AssertionError(f"no handler for {sig.name} within {within}s:\n{proxy.output()}")


def _status(proxy: Proxy) -> str:
    url = f"http://127.0.0.1:{proxy.admin_port}/api/v1/status"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _problems(text: str, path: Path) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith(f"{path}: "))


def test_start_up_refuses_a_bad_file_with_the_message_a_reload_logs(tmp_path: Path) -> None:
    for bad_text in (BAD, BAD_YAML):
        path = tmp_path / "routes.yaml"
        path.write_text(bad_text)
        refused = cli("serve", "-c", str(path), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
        assert refused.returncode == 1
        at_start = _problems(refused.stderr, path)
        assert at_start, refused.stderr

        path.write_text(GOOD)
        with serving(path, tmp_path / "proxy.log") as proxy:
            tmp = tmp_path / "next.yaml"
            tmp.write_text(bad_text)
            tmp.replace(path)
            _wait_for(proxy, r"routing file rejected \((watch|poll)\b")
            time.sleep(0.2)  # the rest of the message
            assert _problems(proxy.output(), path) == at_start
            assert proxy.process.poll() is None  # still serving the last good config


def test_bad_file_problems_at_start_name_fields(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(BAD)
    refused = cli("serve", "-c", str(path), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert refused.returncode == 1
    assert _problems(refused.stderr, path) == [
        f"{path}: routes[0].colour: unknown key",
        f"{path}: routes[0].weight: must be <= 100",
    ]
    path.write_text(BAD_YAML)
    refused = cli("serve", "-c", str(path), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
    assert refused.returncode == 1
    assert re.search(
        rf"^{re.escape(str(path))}: line \d+, column \d+: invalid YAML", refused.stderr, re.M
    )


def test_sighup_reaches_the_reload_path_of_a_running_proxy(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(GOOD)
    with serving(path, tmp_path / "proxy.log") as proxy:
        # a good change, made by hand and announced with SIGHUP (the watch may be first)
        (tmp_path / "next.yaml").write_text(GOOD.replace("routes:", "revision: v2\nroutes:"))
        (tmp_path / "next.yaml").replace(path)
        _wait_until_caught(proxy, signal.SIGHUP)
        proxy.process.send_signal(signal.SIGHUP)
        _wait_for(proxy, r"routing file loaded \(.*\): revision v2\+")
        assert '"revision": "v2+' in _status(proxy)

        # a bad file: the watch rejects it once; SIGHUP asks again and gets the answer again
        (tmp_path / "next.yaml").write_text(BAD)
        (tmp_path / "next.yaml").replace(path)
        _wait_for(proxy, r"routing file rejected \((poll|watch)\)")
        proxy.process.send_signal(signal.SIGHUP)
        _wait_for(proxy, r"routing file rejected \(sighup\), revision v2\+\w+ keeps serving")
        assert proxy.process.poll() is None
        assert '"revision": "v2+' in _status(proxy)
