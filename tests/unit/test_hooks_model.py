"""``rollout.hooks`` in the routing file: `splitproxy.config.Hook`."""

from __future__ import annotations

import textwrap

import pytest

from splitproxy.config import Hook, Rollout, parse_routing
from splitproxy.errors import ConfigError
from splitproxy.rollout.hooks import slack_text


def rollout_of(body: str) -> Rollout:
    text = "routes:\n  - name: shop\n    stable: http://s\n    candidate: http://c\n"
    text += "    rollout:\n" + textwrap.indent(textwrap.dedent(body).strip(), "      ") + "\n"
    rollout = parse_routing(text, "routes.yaml").routes[0].rollout
    assert rollout is not None
    return rollout


def test_hooks_parse_with_a_bare_yaml_on_key() -> None:
    r = rollout_of(
        """
        steps: [5, 50]
        hooks:
          - {on: confirm-promotion, url: http://ci.internal/approve}
          - {on: step, url: http://ci.internal/step, timeout: 2s, retries: 0, name: ci-step}
          - {on: event, url: https://hooks.slack.com/T/B/x, format: slack}
          - {on: rollback, url: http://ops/undo, headers: {Authorization: Bearer t}}
        """
    )
    approve, step, chat, undo = r.hooks
    assert approve == Hook(on="confirm-promotion", url="http://ci.internal/approve")
    assert (approve.timeout, approve.retries, approve.format) == (10.0, 2, "json")
    assert (step.timeout, step.retries, step.name) == (2.0, 0, "ci-step")
    assert chat.format == "slack"
    assert undo.headers == {"Authorization": "Bearer t"}
    assert r.gates == {"confirm-promotion", "step"}
    assert [h.gating for h in r.hooks] == [True, True, False, False]


def test_hook_problems_name_the_hook_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        rollout_of(
            """
            steps: [5]
            hooks:
              - {on: approve, url: "ftp://x", retries: -1, timeout: 0s, colour: red}
              - {url: "http://x"}
              - {on: event, format: xml, url: "http://x", headers: {"a b": c}}
            """
        )
    assert [str(p) for p in info.value.problems] == [
        "routes[0].rollout.hooks[0].on: must be 'pre-rollout', 'step', 'confirm-promotion', "
        "'post-rollout', 'rollback' or 'event'",
        "routes[0].rollout.hooks[0].url: 'ftp://x': must be an http:// or https:// URL",
        "routes[0].rollout.hooks[0].timeout: must be a duration > 0",
        "routes[0].rollout.hooks[0].retries: must be >= 0",
        "routes[0].rollout.hooks[0].colour: unknown key",
        "routes[0].rollout.hooks[1].on: is required",
        "routes[0].rollout.hooks[2].format: must be 'json' or 'slack'",
        "routes[0].rollout.hooks[2].headers.a b: must be a header field name",
    ]


def test_no_hooks_by_default() -> None:
    r = rollout_of("steps: [5]")
    assert r.hooks == ()
    assert r.gates == frozenset()


def test_slack_text_shows_the_weight_after_the_decision_and_the_revision() -> None:
    body = slack_text(
        {"route": "shop", "revision": "2.4.0", "type": "rolled_back", "weight": 25,
         "weight_after": 0, "message": "the guard tripped"}
    )  # fmt: skip
    assert body == {
        "text": "splitproxy · shop 2.4.0: rolled_back (candidate at 0%). the guard tripped"
    }
