"""The console's security pieces that need no server: sessions, tokens, redirects, origins."""

from __future__ import annotations

import time

import pytest
from starlette.datastructures import Headers

from services.console.security import Sessions, _host_name, _same_origin, safe_next, token_matches
from services.console.server import auth_settings, is_loopback, parse_args
from services.mesh.config import ConfigError


def test_sessions_are_random_expire_when_idle_and_are_capped(monkeypatch):
    sessions = Sessions(idle_s=10, limit=3)
    first = sessions.create("a")
    assert sessions.get(first.id) is first and first.csrf != first.id and len(first.id) >= 40
    assert sessions.get("guess") is None and sessions.get(None) is None
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    assert sessions.get(first.id) is None
    monkeypatch.undo()
    kept = [sessions.create(str(i)) for i in range(4)]
    assert sessions.get(kept[0].id) is None and sessions.get(kept[-1].id) is kept[-1]


def test_token_comparison():
    assert token_matches("abc", "abc")
    assert not token_matches("", "abc") and not token_matches("abd", "abc") and not token_matches("ab", "abc")


@pytest.mark.parametrize(
    "target,expected",
    [
        ("/studies/x", "/studies/x"),
        ("", "/"),
        (None, "/"),
        ("https://evil.example/", "/"),
        ("//evil.example", "/"),
        ("/\\evil", "/"),
    ],
)
def test_login_redirects_stay_on_the_console(target, expected):
    assert safe_next(target) == expected


@pytest.mark.parametrize(
    "headers,ok",
    [
        ({"host": "127.0.0.1:7108"}, True),
        ({"host": "127.0.0.1:7108", "origin": "http://127.0.0.1:7108", "sec-fetch-site": "same-origin"}, True),
        (
            {"host": "127.0.0.1:7108", "origin": "null", "sec-fetch-site": "same-origin"},
            True,
        ),  # no-referrer pages send Origin: null
        ({"host": "127.0.0.1:7108", "origin": "http://127.0.0.1:7208"}, False),  # another org's console
        ({"host": "127.0.0.1:7108", "origin": "null", "sec-fetch-site": "same-site"}, False),
        ({"host": "127.0.0.1:7108", "sec-fetch-site": "cross-site"}, False),
    ],
)
def test_posts_from_other_origins_are_refused(headers, ok):
    assert _same_origin(Headers(headers)) is ok


def test_host_names_and_loopback():
    assert (
        _host_name("127.0.0.1:7108") == "127.0.0.1"
        and _host_name("[::1]:7108") == "[::1]"
        and _host_name("localhost") == "localhost"
    )
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


def test_token_login_only_on_loopback_and_proxy_mode_defaults():
    with pytest.raises(ConfigError):
        auth_settings(parse_args(["--host", "0.0.0.0"], {}), "insurer", {})
    token = auth_settings(parse_args([], {}), "insurer", {"RISKMESH_CONSOLE_TOKEN": "t0k"})
    assert token.token == "t0k" and token.cookie_name == "riskmesh-console-insurer" and "*" not in token.allowed_hosts
    proxy = auth_settings(
        parse_args(["--host", "0.0.0.0", "--auth", "proxy"], {"RISKMESH_CONSOLE_USER_HEADER": "X-Auth-Request-User"}),
        "insurer",
        {},
    )
    assert (
        proxy.mode == "proxy"
        and proxy.user_header == "x-auth-request-user"
        and proxy.secure_cookie
        and proxy.allowed_hosts == ("*",)
    )
    assert len(auth_settings(parse_args([], {}), "insurer", {}).token) >= 32
