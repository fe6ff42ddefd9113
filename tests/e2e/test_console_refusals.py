"""What the consoles refuse, in headless Chromium against the real processes: no or a
wrong login token, a forged or missing CSRF token, a form posted from another site, an
approval of a digest that is no longer current, and a foreign Host header. Also the
security headers and the session cookie's attributes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.testkit.studies import spec_for
from services.tools.consoles import wait_console
from services.tools.launcher import ServerProcess
from tests.e2e.console_browser import ALPHA, VIEWPORT, shot, signed_in

pytestmark = pytest.mark.e2e


def test_no_or_wrong_token_shows_nothing(console_mesh, browser):
    hospital = console_mesh.consoles["hospital"]
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    # No session: every page sends the browser to the login form, and shows no data.
    page.goto(hospital.url + "/studies")
    assert page.url.startswith(hospital.url + "/login")
    assert page.get_by_label("Login token").is_visible() and page.get_by_role("navigation").count() == 0
    shot(page, "login")
    for path in ("/runs/anything/events", "/audit"):
        assert context.request.get(hospital.url + path, max_redirects=0).status in (303, 401)
    assert context.request.post(hospital.url + "/studies/x/approve", form={"csrf_token": "x"}).status == 401
    # A wrong token, and another organisation's token, are refused.
    for token in ("wrong-token", console_mesh.consoles["insurer"].token):
        response = page.goto(f"{hospital.url}/login?token={token}")
        assert response.status == 403
        assert "not this console's login token" in page.locator("[role=alert]").inner_text()
    shot(page, "login-wrong-token")
    page.get_by_label("Login token").fill(hospital.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/studies$"))
    context.close()


def test_security_headers_and_session_cookie(console_mesh, browser):
    insurer = console_mesh.consoles["insurer"]
    context, page = signed_in(browser, insurer)
    headers = page.goto(insurer.url + "/studies").headers
    assert (
        "script-src 'self'" in headers["content-security-policy"]
        and "unsafe-inline" not in headers["content-security-policy"]
    )
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    (cookie,) = context.cookies()
    assert cookie["name"] == "riskmesh-console-insurer" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert insurer.token not in cookie["value"]
    context.close()
    # DNS rebinding: a Host the console does not serve is refused.
    request = urllib.request.Request(insurer.url + "/login", headers={"Host": "attacker.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def test_forged_csrf_token_and_cross_site_form_are_refused(console_mesh, browser):
    m = console_mesh
    study = m.clients["insurer"].propose(spec_for(m.data, "console-csrf", alphas=[ALPHA]), m.sources["insurer"])
    hospital = m.consoles["hospital"]
    context, page = signed_in(browser, hospital)
    approve = f"{hospital.url}/studies/console-csrf/approve"
    fields = {"spec_digest": study.spec_digest, "source_path": m.sources["hospital"]}
    assert context.request.post(approve, form={**fields, "csrf_token": "forged"}, max_redirects=0).status == 403
    assert context.request.post(approve, form=fields, max_redirects=0).status == 403
    # A page of another site posting the same form in the signed-in browser: the
    # SameSite=Strict cookie stays home and Fetch Metadata names the other site.
    attacker = context.new_page()
    attacker.set_content("<p>a page of another site</p>")
    attacker.evaluate(
        """([action, digest, source]) => {
            const form = document.createElement('form');
            form.method = 'post'; form.action = action;
            for (const [k, v] of Object.entries({spec_digest: digest, source_path: source, csrf_token: 'forged'})) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = k; input.value = v; form.appendChild(input);
            }
            document.body.appendChild(form); form.submit();
        }""",
        [approve, study.spec_digest, m.sources["hospital"]],
    )
    attacker.wait_for_url(approve)
    assert re.search("not signed in|refused", attacker.content())
    assert "hospital" not in m.clients["hospital"].get_study("console-csrf").approved_by
    # The real form, with its token, works.
    page.goto(f"{hospital.url}/studies/console-csrf")
    page.get_by_label("Your CSV file for this study").fill(m.sources["hospital"])
    page.get_by_role("button", name=re.compile("Approve digest")).click()
    page.wait_for_url(re.compile(r"done=approved"))
    assert "hospital" in m.clients["hospital"].get_study("console-csrf").approved_by
    context.close()


def test_approval_of_a_stale_digest_is_refused(console_mesh, browser):
    m = console_mesh
    first = m.clients["insurer"].propose(spec_for(m.data, "console-stale", alphas=[ALPHA]), m.sources["insurer"])
    context, page = signed_in(browser, m.consoles["hospital"])
    page.goto(m.consoles["hospital"].url + "/studies/console-stale")
    assert page.locator("#digest").inner_text() == first.spec_digest
    # Meanwhile the insurer changes the spec: a new digest, approvals cleared.
    changed = m.clients["insurer"].propose(spec_for(m.data, "console-stale", alphas=[0.2]), m.sources["insurer"])
    assert changed.spec_digest != first.spec_digest
    page.get_by_label("Your CSV file for this study").fill(m.sources["hospital"])
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=re.compile("Approve digest")).click()
    assert navigation.value.status == 409
    assert "The study changed since you loaded it" in page.get_by_role("alert").first.inner_text()
    assert changed.spec_digest in page.content()  # the gateway's message names the current digest
    shot(page, "approve-stale-digest")
    assert "hospital" not in m.clients["hospital"].get_study("console-stale").approved_by
    page.get_by_role("link", name="Review the current spec").click()
    assert page.locator("#digest").inner_text() == changed.spec_digest
    context.close()


def test_proxy_mode_trusts_only_the_sso_header_and_probes_see_only_health(console_mesh):
    """The Kubernetes way in (`--auth proxy`): no header, no entry; the probe port answers
    /healthz and nothing else; token mode refuses a non-loopback address."""
    port, health = find_free_port(), find_free_port()
    config = console_mesh.configs["insurer"]
    env = {**os.environ, "RISKMESH_CONSOLE_AUTH": "proxy", "RISKMESH_CONSOLE_USER_HEADER": "X-Auth-Request-User"}
    command = [
        sys.executable,
        "-m",
        "services.console",
        "--config",
        str(config),
        "--port",
        str(port),
        "--health-port",
        str(health),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_console(
            ServerProcess("insurer", "console", process, Path(os.devnull), f"http://127.0.0.1:{health}/healthz")
        )
        base = f"http://127.0.0.1:{port}"
        assert http_status(base + "/studies") == 401
        assert http_status(base + "/studies", {"X-Auth-Request-User": "dpo@insurer.example"}) == 200
        assert http_status(f"http://127.0.0.1:{health}/studies", {"X-Auth-Request-User": "dpo@insurer.example"}) == 404
    finally:
        process.terminate()
        process.wait(10)
    refused = subprocess.run(
        [*command[:-4], "--host", "0.0.0.0"],
        env={**os.environ, "RISKMESH_CONSOLE_AUTH": "token"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr


def find_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
