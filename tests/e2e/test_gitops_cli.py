"""``splitproxy serve -c git+file://...``: the routing file read from a branch of a real git
repository (a local bare one), changed by commits pushed from a second clone."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.proc import cli, serving

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}  # no user config leaks in
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def routes(weight: float) -> str:
    return yaml.safe_dump(
        {
            "routes": [
                {
                    "name": "shop",
                    "stable": "http://127.0.0.1:9",
                    "candidate": "http://127.0.0.1:10",
                    "weight": weight,
                }
            ]
        }
    )


@dataclass
class Repo:
    """A bare repository (the remote) and a working clone that pushes to it."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return f"git+file://{self.bare}#main:routing/routes.yaml"

    def commit(self, text: str, message: str, path: str = "routing/routes.yaml") -> str:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        git("add", path, cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", "main", cwd=self.work)
        return git("rev-parse", "--short=7", "HEAD", cwd=self.work)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    bare, work = tmp_path / "deploy.git", tmp_path / "work"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    git("checkout", "--quiet", "-b", "main", cwd=work)
    return Repo(bare, work)


def status(admin_port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{admin_port}/api/v1/status"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def shop_weight(body: dict[str, Any]) -> float:
    (route,) = [r for r in body["routes"] if r["name"] == "shop"]
    return float(route["weight"]["file"])


def test_commits_to_the_branch_apply_and_a_bad_commit_keeps_the_last_good_one(
    repo: Repo, tmp_path: Path
) -> None:
    first = repo.commit(routes(5), "shop at 5%")
    with serving(repo.url, tmp_path / "proxy.log") as proxy:
        before = status(proxy.admin_port)
        assert before["config"]["revision"].startswith(f"{first}+")
        assert before["config"]["path"] == repo.url
        assert shop_weight(before) == 5.0

        second = repo.commit(routes(25), "shop at 25%")
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        done = cli("reload", *admin)
        assert done.returncode == 0, done.stderr
        assert f"revision {second}+" in done.stdout
        after = status(proxy.admin_port)
        assert shop_weight(after) == 25.0
        assert after["config"]["revision"].startswith(f"{second}+")
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=5
        ).read()
        info = [line for line in metrics.decode().splitlines() if "splitproxy_config_info{" in line]
        assert f'revision="{after["config"]["revision"]}"' in info[0]

        # a commit that touches another file leaves the serving revision as it is
        repo.commit("notes\n", "unrelated", path="README")
        assert cli("reload", *admin).returncode == 0
        assert status(proxy.admin_port)["config"]["revision"] == after["config"]["revision"]

        bad = repo.commit(routes(150), "shop at 150%")
        done = cli("reload", *admin)
        assert done.returncode == 1
        assert "routes[0].weight: must be <= 100" in done.stderr
        rejected = status(proxy.admin_port)
        assert shop_weight(rejected) == 25.0  # the last good commit keeps serving
        assert rejected["config"]["revision"] == after["config"]["revision"]
        assert f"commit {bad}: routes[0].weight: must be <= 100" in rejected["config"]["last_error"]
        assert f"commit {bad}: routes[0].weight" in proxy.output()

        fixed = repo.commit(routes(50), "shop at 50%")
        assert cli("reload", *admin).returncode == 0
        good = status(proxy.admin_port)
        assert shop_weight(good) == 50.0
        assert good["config"]["revision"].startswith(f"{fixed}+")
        assert good["config"]["last_error"] is None


def test_the_branch_is_fetched_every_interval_without_a_trigger(repo: Repo, tmp_path: Path) -> None:
    repo.commit(routes(5), "shop at 5%")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"SPLITPROXY_GIT_INTERVAL": "0.2", "TMPDIR": str(scratch)}
    with serving(repo.url, tmp_path / "proxy.log", env=env) as proxy:
        assert list(scratch.glob("splitproxy-git-*"))  # no state_dir: a temporary mirror
        second = repo.commit(routes(30), "shop at 30%")
        deadline = time.monotonic() + 20
        while shop_weight(status(proxy.admin_port)) != 30.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        body = status(proxy.admin_port)
        assert shop_weight(body) == 30.0
        assert body["config"]["revision"].startswith(f"{second}+")
    assert not list(scratch.glob("splitproxy-git-*"))  # removed at exit


def test_the_mirror_lives_under_the_state_dir(repo: Repo, tmp_path: Path) -> None:
    repo.commit(routes(5), "shop at 5%")
    state = tmp_path / "state"
    with serving(repo.url, tmp_path / "proxy.log", "--state-dir", str(state)):
        pass
    assert list((state / "git").glob("*/HEAD"))  # kept: a restart fetches only what is new


def serve_once(config: str) -> subprocess.CompletedProcess[str]:
    return cli("serve", "-c", config, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")


def test_start_up_errors_are_one_line_and_exit_1(repo: Repo, tmp_path: Path) -> None:
    repo.commit(routes(5), "shop at 5%")
    missing = f"git+file://{tmp_path}/nowhere.git#main:routing/routes.yaml"
    cases = {  # config -> (what stderr says, exit code; 2 is a bad setting, as for any)
        missing: ("does not appear to be a git repository", 1),
        f"git+file://{repo.bare}#nope:routing/routes.yaml": ("no branch 'nope' in file://", 1),
        f"git+file://{repo.bare}#main:other.yaml": ("no file other.yaml on branch main", 1),
        f"git+file://{repo.bare}#main": ("invalid setting config (SPLITPROXY_CONFIG)", 2),
    }
    for config, (expected, code) in cases.items():
        result = serve_once(config)
        assert result.returncode == code, (config, result.stderr)
        assert expected in result.stderr, (config, result.stderr)
        # one line for the error; the rest is the log of the shutdown that follows
        errors = [line for line in result.stderr.splitlines() if not LOG_LINE.match(line)]
        assert len(errors) == 1, result.stderr
        assert expected in errors[0], result.stderr


def test_an_invalid_file_at_the_first_commit_stops_start_up(repo: Repo) -> None:
    bad = repo.commit(routes(150), "shop at 150%")
    result = serve_once(repo.url)
    assert result.returncode == 1
    assert f"commit {bad}: routes[0].weight: must be <= 100" in result.stderr


def test_a_failing_fetch_is_reported_once_and_serving_goes_on(repo: Repo, tmp_path: Path) -> None:
    first = repo.commit(routes(5), "shop at 5%")
    env = {"SPLITPROXY_GIT_INTERVAL": "0.1"}
    with serving(repo.url, tmp_path / "proxy.log", env=env) as proxy:
        repo.bare.rename(tmp_path / "moved.git")  # the remote goes away
        deadline = time.monotonic() + 20
        while status(proxy.admin_port)["config"]["last_error"] is None:
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.1)
        body = status(proxy.admin_port)
        assert "does not appear to be a git repository" in body["config"]["last_error"]
        assert body["config"]["revision"].startswith(f"{first}+")  # serving goes on
        assert shop_weight(body) == 5.0
        time.sleep(1.0)  # about ten more failing fetches: logged once, not once each
        assert proxy.output().count("does not appear to be a git repository") == 1

        (tmp_path / "moved.git").rename(repo.bare)  # back: the next fetch clears the error
        admin = ["--admin-url", f"http://127.0.0.1:{proxy.admin_port}"]
        assert cli("reload", *admin).returncode == 0
        assert status(proxy.admin_port)["config"]["last_error"] is None
