"""The routing file read from a git branch: ``git+URL#BRANCH:PATH``.

`parse_git_spec` turns the setting into a `GitSpec` (pure; clear messages for bad forms).
`GitSource` keeps a private bare mirror in a directory of its own (under ``state_dir`` when
set, else a temporary directory removed by `GitSource.close`), fetches the one branch into
it and reads PATH at the fetched commit with ``git cat-file``. The reloader calls
`GitSource.fetch` where it would read the file; everything after that (validation, the
last-good config, status and metrics) is the file's reload path.

git runs as a subprocess without a shell (asyncio, so the event loop never waits on it),
with a timeout (its whole process group is killed past it), no terminal prompt and ssh in
batch mode: a remote asking for credentials fails at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from splitproxy.config import RoutingConfig, content_hash
from splitproxy.config.parse import MAX_FILE_BYTES
from splitproxy.errors import ConfigError, Problem

logger = logging.getLogger("splitproxy.git")

PREFIX: Final = "git+"
SCHEMES: Final = frozenset({"file", "http", "https", "ssh", "git"})
SHORT: Final = 7  # characters of a commit id shown in revisions and errors
DEFAULT_TIMEOUT: Final = 60.0
# where the fetched branch lands in the private mirror (never a branch of its own)
REF: Final = "refs/splitproxy/config"
# variables that would point git at another repository than the mirror
_GIT_LOCATION_VARS: Final = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE",
)  # fmt: skip
_BAD_BRANCH: Final = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


@dataclass(frozen=True, slots=True)
class GitSpec:
    """Where the routing file lives: a remote ``url``, a ``branch`` and a ``path`` in it."""

    url: str
    branch: str
    path: str

    def __str__(self) -> str:
        return f"{PREFIX}{redact(self.url)}#{self.branch}:{self.path}"


def redact(url: str) -> str:
    """The URL without a password or token in it (it shows in status and logs)."""
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and parts.scheme in ("http", "https")):
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def is_git_spec(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_git_spec(text: str) -> GitSpec:
    """``git+URL#BRANCH:PATH`` -> `GitSpec`; `ValueError` naming what is wrong."""
    form = "expected git+URL#BRANCH:PATH, e.g. git+https://example.com/deploy.git#main:routes.yaml"
    if not text.startswith(PREFIX):
        raise ValueError(f"{form}")
    url, sep, fragment = text[len(PREFIX) :].partition("#")
    if not sep:
        raise ValueError(f"no #BRANCH:PATH after the URL; {form}")
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES or "://" not in url:
        known = ", ".join(sorted(SCHEMES))
        raise ValueError(f"the URL must start with one of {known} followed by ://; {form}")
    if scheme == "file" and not urlsplit(url).path:
        raise ValueError("a file:// URL needs a path (file:///srv/deploy.git)")
    if scheme != "file" and not urlsplit(url).hostname:
        raise ValueError(f"the URL names no host; {form}")
    branch, sep, path = fragment.partition(":")
    if not sep or not branch or not path:
        raise ValueError(f"the part after # must be BRANCH:PATH; {form}")
    if branch.startswith(("-", "/", "refs/")) or branch.endswith(("/", ".")):
        raise ValueError(f"{branch!r} is not a branch name")
    if _BAD_BRANCH.search(branch) or branch == "@":
        raise ValueError(f"{branch!r} is not a branch name")
    posix = PurePosixPath(path)
    if posix.is_absolute() or path.startswith("-") or ".." in posix.parts:
        raise ValueError(f"the path {path!r} must be relative to the repository's top, no ..")
    if any(ord(c) < 0x20 for c in path) or path.endswith("/"):
        raise ValueError(f"the path {path!r} must name a file")
    return GitSpec(url, branch, posix.as_posix())


def short(commit: str) -> str:
    return commit[:SHORT]


def with_commit(config: RoutingConfig, commit: str) -> RoutingConfig:
    """The config whose revision names the commit it was read at (``v42+1a2b3c4``, or just
    ``1a2b3c4`` when the file names no revision): status, metrics and logs then show it."""
    label = short(commit)
    revision = f"{config.revision}+{label}" if config.revision else label
    return config.model_copy(update={"revision": revision})


@dataclass(frozen=True, slots=True)
class Fetched:
    """The routing file at one commit of the branch."""

    commit: str
    text: str
    digest: str  # sha256 of the file's bytes, as for a file on disk

    @property
    def source(self) -> str:
        """What errors in this file are prefixed with: ``commit 1a2b3c4``."""
        return f"commit {short(self.commit)}"


class GitError(Exception):
    """git could not fetch the branch or read the file; the message is one line."""


class GitSource:
    """A private mirror of one branch, fetched on demand (see the module docstring)."""

    def __init__(
        self, spec: GitSpec, state_dir: Path | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.spec = spec
        self.timeout = timeout
        self._temporary = state_dir is None
        if state_dir is None:
            self.directory = Path(tempfile.mkdtemp(prefix="splitproxy-git-"))
        else:  # one mirror per URL: a restart fetches only what is new
            key = hashlib.sha256(spec.url.encode()).hexdigest()[:16]
            self.directory = state_dir / "git" / key
        self.last: Fetched | None = None
        env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
        env["GIT_TERMINAL_PROMPT"] = "0"  # a remote asking for a password fails, never waits
        env["LC_ALL"] = "C"  # messages as this module expects them
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        self._env = env

    async def open(self) -> Fetched:
        """Create the mirror and fetch the branch: at start-up, where any failure is one
        line (`ConfigError`) and the proxy exits."""
        try:
            if not (self.directory / "HEAD").exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                await self._git("init", "--bare", "--quiet", str(self.directory), mirror=False)
            return await self.fetch()
        except (GitError, OSError) as exc:
            raise ConfigError([Problem("", str(exc))], str(self.spec)) from None

    async def fetch(self) -> Fetched:
        """Fetch the branch and read the file at its head; `GitError` if either fails."""
        refspec = f"+refs/heads/{self.spec.branch}:{REF}"
        try:
            await self._git("fetch", "--quiet", "--no-tags", self.spec.url, refspec)
        except GitError as exc:
            if "couldn't find remote ref" in str(exc):
                where = redact(self.spec.url)
                raise GitError(f"no branch {self.spec.branch!r} in {where}") from None
            raise
        commit = (await self._git("rev-parse", "--verify", f"{REF}^{{commit}}")).decode().strip()
        if self.last is not None and self.last.commit == commit:
            return self.last
        self.last = fetched = await self._read(commit)
        return fetched

    async def _read(self, commit: str) -> Fetched:
        path = self.spec.path
        listing = (await self._git("ls-tree", "-l", commit, "--", path)).decode()
        # "<mode> <type> <object> <size>\t<path>"; nothing when the path is not there
        head = listing.split("\t", 1)[0].split()
        where = f"on branch {self.spec.branch} at commit {short(commit)}"
        if len(head) != 4:
            raise GitError(f"no file {path} {where}")
        _, kind, blob, size = head
        if kind != "blob":
            raise GitError(f"{path} is a {kind}, not a file, {where}")
        if size.isdigit() and int(size) > MAX_FILE_BYTES:
            raise GitError(f"{path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB {where}")
        raw = await self._git("cat-file", "blob", blob)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GitError(f"{path} is not UTF-8 text {where}") from None
        return Fetched(commit, text, content_hash(raw))

    async def _git(self, *args: str, mirror: bool = True) -> bytes:
        command = ["git", *(("--git-dir", str(self.directory)) if mirror else ()), *args]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # its helpers (ssh, remote-https) are killed with it
            )
        except FileNotFoundError:
            raise GitError("git is not installed (no git on PATH)") from None
        try:
            async with asyncio.timeout(self.timeout):
                out, err = await process.communicate()
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise GitError(f"git {args[0]} took longer than {self.timeout:g}s") from None
        if process.returncode != 0:
            raise GitError(f"git {args[0]} failed: {_first_error(err)}")
        return out

    def close(self) -> None:
        """Remove the mirror if it is a temporary one (a mirror under ``state_dir`` stays)."""
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)


def _first_error(stderr: bytes) -> str:
    """The line of git's error output that says what failed (``fatal: ...``), redacted."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    chosen = next((line for line in lines if line.startswith("fatal:")), None)
    text = chosen or (lines[-1] if lines else "no message")
    text = text.removeprefix("fatal: ")
    # a URL with a token may be echoed back by git: never show its password
    return re.sub(r"://[^/@\s]*@", "://***@", text)
