"""Parsing ``git+URL#BRANCH:PATH`` (the ``config`` setting naming a routing file in git)."""

from __future__ import annotations

import re

import pytest

from splitproxy.config import parse_routing
from splitproxy.gitsource import GitSpec, parse_git_spec, redact, with_commit
from splitproxy.settings import InvalidSettings, load_settings


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        (
            "git+file:///srv/repo.git#main:routing/routes.yaml",
            GitSpec("file:///srv/repo.git", "main", "routing/routes.yaml"),
        ),
        (
            "git+https://github.com/org/deploy.git#release/2024:proxy/routes.yaml",
            GitSpec("https://github.com/org/deploy.git", "release/2024", "proxy/routes.yaml"),
        ),
        (
            "git+ssh://git@example.com:2222/deploy.git#main:./routes.yaml",
            GitSpec("ssh://git@example.com:2222/deploy.git", "main", "routes.yaml"),
        ),
    ],
)
def test_good_forms_parse(text: str, spec: GitSpec) -> None:
    assert parse_git_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("git+file:///srv/repo.git", "no #BRANCH:PATH after the URL"),
        ("git+file:///srv/repo.git#main", "the part after # must be BRANCH:PATH"),
        ("git+file:///srv/repo.git#:routes.yaml", "the part after # must be BRANCH:PATH"),
        ("git+ftp://example.com/repo.git#main:r.yaml", "must start with one of file, git"),
        ("git+/srv/repo.git#main:r.yaml", "must start with one of file, git"),
        ("git+https:///repo.git#main:r.yaml", "the URL names no host"),
        ("git+file:///srv/repo.git#--upload-pack=x:r.yaml", "is not a branch name"),
        ("git+file:///srv/repo.git#a..b:r.yaml", "is not a branch name"),
        ("git+file:///srv/repo.git#main:/etc/passwd", "must be relative to the repository"),
        ("git+file:///srv/repo.git#main:../up.yaml", "must be relative to the repository"),
        ("git+file:///srv/repo.git#main:routing/", "must name a file"),
    ],
)
def test_bad_forms_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_git_spec(text)


def test_the_setting_keeps_the_url_whole_and_names_the_variable_on_error() -> None:
    settings = load_settings(config="git+file:///srv/repo.git#main:routes.yaml")
    assert settings.config is None  # not a file
    assert settings.git_spec == GitSpec("file:///srv/repo.git", "main", "routes.yaml")
    with pytest.raises(InvalidSettings) as caught:
        load_settings(config="git+file:///srv/repo.git")
    (line,) = caught.value.lines
    assert line.startswith("splitproxy: invalid setting config (SPLITPROXY_CONFIG): ")
    assert "git+URL#BRANCH:PATH" in line


def test_a_plain_path_is_still_a_file() -> None:
    settings = load_settings(config="/etc/splitproxy/routes.yaml")
    assert str(settings.config) == "/etc/splitproxy/routes.yaml"
    assert settings.git_spec is None


def test_a_token_in_the_url_never_shows() -> None:
    spec = parse_git_spec("git+https://ci:s3cret@example.com/deploy.git#main:routes.yaml")
    assert "s3cret" not in str(spec)
    assert spec.url == "https://ci:s3cret@example.com/deploy.git"  # git still gets it
    assert redact("https://tok@example.com/x.git") == "https://***@example.com/x.git"
    assert redact("ssh://git@example.com/x.git") == "ssh://git@example.com/x.git"


def test_the_revision_names_the_commit_with_the_files_own_revision() -> None:
    commit = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
    plain = parse_routing("routes:\n  - {name: shop, stable: http://a:1}\n", "t")
    assert with_commit(plain, commit).revision == "1a2b3c4"
    named = parse_routing("revision: v42\nroutes:\n  - {name: shop, stable: http://a:1}\n", "t")
    assert with_commit(named, commit).revision == "v42+1a2b3c4"
