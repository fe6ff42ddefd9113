"""Who may use the console, and the browser-side protections around every response.

Two ways in (`--auth`):
- "token" (default, on 127.0.0.1): a random login token printed at start, as Jupyter
  does. `GET /login?token=…` (or the login form) turns it into a session cookie
  (HttpOnly, SameSite=Strict); the token itself is never stored in the browser.
- "proxy" (Kubernetes, behind the org's ingress and single sign-on such as oauth2-proxy):
  the proxy authenticates people and passes the user in a header; a NetworkPolicy lets
  only the ingress reach the console, so no one else can set that header.

Every POST carries the session's CSRF token (a hidden form field), checked here before
any handler runs; a POST that the browser says comes from another origin (Origin,
Sec-Fetch-Site) is refused too. Every response
gets a strict Content-Security-Policy (scripts and styles from the console's own
/static only, nothing inline), X-Frame-Options DENY, no referrer, nosniff, no-store.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

log = logging.getLogger("riskmesh.console.security")

Scope = MutableMapping[str, object]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

SESSION_IDLE_S = 12 * 3600
MAX_SESSIONS = 200
MAX_BODY_BYTES = 1024 * 1024
PUBLIC_PREFIXES = ("/static/", "/healthz")
CSRF_FIELD = "csrf_token"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    (b"cache-control", b"no-store"),
]


@dataclass
class Session:
    id: str
    csrf: str
    user: str
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Server-side sessions: the cookie holds only a random id."""

    def __init__(self, idle_s: float = SESSION_IDLE_S, limit: int = MAX_SESSIONS) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._idle_s = idle_s
        self._limit = limit

    def create(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user)
        self._sessions[session.id] = session
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        if time.monotonic() - session.last_seen > self._idle_s:
            del self._sessions[session.id]
            return None
        session.last_seen = time.monotonic()
        self._sessions.move_to_end(session.id)
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


@dataclass(frozen=True)
class AuthSettings:
    mode: str  # "token" or "proxy"
    token: str  # the login token (token mode)
    cookie_name: str
    allowed_hosts: tuple[str, ...]  # Host header values (without port) accepted; "*" = any
    user_header: str = "x-forwarded-user"  # proxy mode
    secure_cookie: bool = False
    health_port: int | None = None  # a port that answers GET /healthz only (Kubernetes probes)


def token_matches(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class ConsoleSecurity:
    """ASGI middleware: host check, authentication, CSRF, security headers."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AuthSettings,
        sessions: Sessions,
        login_page: Callable[[Request, str, int], Response],
    ) -> None:
        self.app = app
        self.settings = settings
        self.sessions = sessions
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    h for h in message.get("headers", []) if h[0].lower() not in {k for k, _ in SECURITY_HEADERS}
                ]  # type: ignore[union-attr]
                message["headers"] = headers + SECURITY_HEADERS
            await send(message)

        request = Request(scope, receive)
        response, receive = await self._gate(request, receive)
        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _gate_request(self, request: Request) -> tuple[bool, Response | None]:
        """Checks before any session: (decided, the refusal or None to let it through)."""
        server = request.scope.get("server")
        if self.settings.health_port is not None and server and server[1] == self.settings.health_port:
            # The probe port, open to the node: the health answer and nothing else.
            ok = request.method == "GET" and request.url.path == "/healthz"
            return True, (None if ok else PlainTextResponse("not found", status_code=404))
        host = _host_name(request.headers.get("host") or "")
        if "*" not in self.settings.allowed_hosts and host not in self.settings.allowed_hosts:
            return True, PlainTextResponse("unknown host", status_code=400)
        if request.url.path.startswith(PUBLIC_PREFIXES):
            return True, None
        if request.method not in ("GET", "HEAD", "POST"):
            return True, PlainTextResponse("method not allowed", status_code=405)
        if request.method == "POST" and not _same_origin(request.headers):
            return True, PlainTextResponse("cross-origin request refused", status_code=403)
        return False, None

    async def _gate(self, request: Request, receive: Callable) -> tuple[Response | None, Callable]:
        """A refusal or redirect, or None to let the request through (with its body replayable)."""
        decided, refusal = self._gate_request(request)
        if decided:
            return refusal, receive
        path = request.url.path
        if self.settings.mode == "token" and path == "/login":
            return await self._login(request), receive
        session, new_cookie = self._session(request)
        if session is None:
            if request.method == "GET" and self.settings.mode == "token":
                return RedirectResponse(
                    f"/login?next={quote(safe_next(str(request.url.path)), safe='/')}", status_code=303
                ), receive
            return PlainTextResponse("not signed in", status_code=401), receive
        request.scope.setdefault("state", {})["session"] = session
        if request.method == "POST":
            body = await _read_body(receive)
            if body is None:
                return PlainTextResponse("request too large", status_code=413), receive
            receive = _replay(body)
            form = await Request(request.scope, _replay(body)).form()
            if not token_matches(str(form.get(CSRF_FIELD) or ""), session.csrf):
                log.warning("refused a POST to %s without a valid CSRF token", path)
                return PlainTextResponse(
                    "invalid or missing CSRF token: reload the page and try again", status_code=403
                ), receive
            if path == "/logout":
                self.sessions.drop(session.id)
                response = RedirectResponse("/login" if self.settings.mode == "token" else "/", status_code=303)
                response.delete_cookie(self.settings.cookie_name, path="/")
                return response, receive
        if new_cookie:
            return _CookieSetter(self, session), receive
        return None, receive

    def _session(self, request: Request) -> tuple[Session | None, bool]:
        """(session, whether it is new and needs its cookie set)."""
        session = self.sessions.get(request.cookies.get(self.settings.cookie_name))
        if self.settings.mode == "token":
            return session, False
        user = (request.headers.get(self.settings.user_header) or "").strip()
        if not user:
            return None, False
        if session is not None and session.user == user:
            return session, False
        return self.sessions.create(user), True

    async def _login(self, request: Request) -> Response:
        if request.method == "POST":
            form = await request.form()
            given, target = str(form.get("token") or ""), str(form.get("next") or "/")
        else:
            given, target = request.query_params.get("token", ""), request.query_params.get("next", "/")
            if not given:
                return self.login_page(request, "", 200)
        if not token_matches(given, self.settings.token):
            log.warning("refused a login with a wrong token")
            return self.login_page(request, "That token is not this console's login token.", 403)
        session = self.sessions.create("token holder")
        response = RedirectResponse(safe_next(target), status_code=303)
        self.set_cookie(response, session)
        return response

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            self.settings.cookie_name,
            session.id,
            max_age=SESSION_IDLE_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.settings.secure_cookie,
        )


class _CookieSetter:
    """Lets a request through but sets a new session's cookie on its response (proxy mode)."""

    def __init__(self, security: ConsoleSecurity, session: Session) -> None:
        self.security = security
        self.session = session

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        cookie = Response()
        self.security.set_cookie(cookie, self.session)
        extra = [h for h in cookie.raw_headers if h[0] == b"set-cookie"]

        async def send_cookie(message: MutableMapping[str, object]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra  # type: ignore[arg-type]
            await send(message)

        await self.security.app(scope, receive, send_cookie)


def _host_name(host_header: str) -> str:
    """The host of a Host header, without its port ("[::1]:8080" -> "[::1]")."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.split(":", 1)[0]


def _same_origin(headers: Headers) -> bool:
    """Whether a POST may come from this console's own pages. With `Referrer-Policy:
    no-referrer` browsers send `Origin: null` on form posts, so an Origin is only refused
    when it names another host; Fetch Metadata (`Sec-Fetch-Site`) then tells a page of
    the same origin from another site or another port of this host (another org's console)."""
    origin = headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host"):
        return False
    return headers.get("sec-fetch-site") in (None, "same-origin")


async def _read_body(receive: Callable) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
