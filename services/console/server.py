"""`riskmesh-console` / `python -m services.console`: one organisation's web console.

    riskmesh-console --config .riskmesh/insurer/riskmesh.toml
    riskmesh console of insurer: http://127.0.0.1:7108/login?token=…

Serves HTTP on 127.0.0.1 (port base_port + 8 unless --port) and prints a login URL with
a fresh token, as Jupyter does; `--auth proxy` is for Kubernetes, behind the org's
ingress and single sign-on (k8s/README.md). Token mode refuses a non-loopback address:
the token would cross the network in clear.

Settings, flag over environment: --host RISKMESH_CONSOLE_HOST, --port
RISKMESH_CONSOLE_PORT, --health-port RISKMESH_CONSOLE_HEALTH_PORT, --auth RISKMESH_CONSOLE_AUTH, --user-header
RISKMESH_CONSOLE_USER_HEADER, --allowed-host RISKMESH_CONSOLE_ALLOWED_HOSTS (comma
separated), and RISKMESH_CONSOLE_TOKEN (the login token; random when unset).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from services.console.app import Console
from services.console.gateway import ConsoleGateway
from services.console.security import AuthSettings
from services.mesh.config import ConfigError, OrgConfig, load_config

CONSOLE_PORT_OFFSET = 8  # base_port + 8: free between the mTLS (0-4) and health (10-14) ports
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def console_port(config: OrgConfig) -> int:
    return config.base_port + CONSOLE_PORT_OFFSET


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="riskmesh-console", description="riskmesh web console of one organisation")
    parser.add_argument("--config", type=Path, help="org config file (default: $RISKMESH_CONFIG)")
    parser.add_argument(
        "--host", default=env.get("RISKMESH_CONSOLE_HOST", "127.0.0.1"), help="address to serve HTTP on"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env["RISKMESH_CONSOLE_PORT"]) if env.get("RISKMESH_CONSOLE_PORT") else None,
        help="HTTP port (default: the org's base_port + 8)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=int(env["RISKMESH_CONSOLE_HEALTH_PORT"]) if env.get("RISKMESH_CONSOLE_HEALTH_PORT") else None,
        help="also serve GET /healthz alone on this port (Kubernetes probes); off by default",
    )
    parser.add_argument(
        "--auth",
        choices=("token", "proxy"),
        default=env.get("RISKMESH_CONSOLE_AUTH", "token"),
        help="token: a printed login token (loopback only); "
        "proxy: the user comes from a header set by the org's SSO proxy",
    )
    parser.add_argument(
        "--user-header",
        default=env.get("RISKMESH_CONSOLE_USER_HEADER", "X-Forwarded-User"),
        help="proxy mode: the header carrying the signed-in user",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        help="Host header names accepted (repeat); default: loopback names in token mode, any in proxy mode",
    )
    args = parser.parse_args(argv)
    if args.allowed_host is None and env.get("RISKMESH_CONSOLE_ALLOWED_HOSTS"):
        args.allowed_host = [h.strip() for h in env["RISKMESH_CONSOLE_ALLOWED_HOSTS"].split(",") if h.strip()]
    return args


def auth_settings(args: argparse.Namespace, org: str, env: Mapping[str, str]) -> AuthSettings:
    if args.auth == "token" and not is_loopback(args.host):
        raise ConfigError(
            f"token login serves only a loopback address, not {args.host!r}: use --auth proxy behind your SSO ingress"
        )
    default_hosts = LOOPBACK_NAMES if args.auth == "token" else ("*",)
    return AuthSettings(
        mode=args.auth,
        token=env.get("RISKMESH_CONSOLE_TOKEN") or secrets.token_urlsafe(24),
        cookie_name=f"riskmesh-console-{org}",  # cookies ignore ports: one name per org on a shared host
        allowed_hosts=tuple(args.allowed_host or default_hosts),
        user_header=args.user_header.lower(),
        secure_cookie=args.auth == "proxy",  # behind the ingress the browser speaks HTTPS
        health_port=args.health_port,
    )


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    args = parse_args(argv, env)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s console %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = load_config(args.config)
        auth = auth_settings(args, config.org, env)
    except ConfigError as exc:
        print(f"riskmesh-console: {exc}", file=sys.stderr)
        return 2
    try:
        gateway = ConsoleGateway(config)
    except (FileNotFoundError, ValueError) as exc:
        print(f"riskmesh-console: {exc}", file=sys.stderr)
        return 2
    port = args.port or console_port(config)
    host_in_url = f"[{args.host}]" if ":" in args.host else args.host
    if auth.mode == "token":
        print(f"riskmesh console of {config.org}: http://{host_in_url}:{port}/login?token={auth.token}", flush=True)
    else:
        print(
            f"riskmesh console of {config.org}: serving {host_in_url}:{port} behind the SSO proxy ({args.user_header})",
            flush=True,
        )
    app = Console(gateway, auth).asgi()
    # No access log: a login URL carries the token in its query string.
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=port,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=3,
            log_level="info",
        )
    )
    try:
        sockets = [listening_socket(args.host, p) for p in (port, args.health_port) if p is not None]
    except OSError as exc:
        print(f"riskmesh-console: cannot listen on {args.host}: {exc}", file=sys.stderr)
        return 2
    server.run(sockets=sockets)
    return 0


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (uvicorn serves the app on each socket it is given)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


if __name__ == "__main__":
    raise SystemExit(main())
