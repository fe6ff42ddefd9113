"""The image (Dockerfile, .dockerignore) and the entry points the manifests name.

The image itself is built and run by tests/containers; these tests check, without a
container runtime, that every command the Dockerfile and the Deployments name is a
console script of pyproject.toml pointing at the server module the launcher runs, that
the image installs the hashed runtime lock only, that the build context keeps keys and
local state out, and that a gateway started the way its pod starts it (its command,
environment, config and certificate layout) comes up.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from riskmesh.client import GatewayClient
from services.tools.launcher import reserve_port, server_module, wait_healthy
from services.tools.pki import ca_fingerprints, export_k8s, init_pki
from tests.k8s.manifests import OVERLAYS, REPO, component, containers, of_kind, render

DOCKERFILE = (REPO / "Dockerfile").read_text()
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    )
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


# --- entry points --------------------------------------------------------------------


def manifest_commands() -> list[tuple[str, list[str]]]:
    out = []
    for org in OVERLAYS:
        for dep in of_kind(render(f"overlays/{org}"), "Deployment"):
            for c in containers(dep):
                out.append((component(dep), c["command"]))
    return out


def test_every_deployment_runs_its_own_server_console_script():
    for server, command in manifest_commands():
        assert command == [f"riskmesh-{server}"], (server, command)
        assert command[0] in SCRIPTS, f"{command[0]} is not a console script in pyproject.toml"
        # pyproject, the manifests and the local launcher agree on the module of each server.
        assert SCRIPTS[command[0]] == f"{server_module(server)}:main"


def test_every_command_in_the_dockerfile_is_a_console_script():
    named = [exec_form(args)[0] for instr, args in dockerfile_instructions() if instr in ("CMD", "ENTRYPOINT")]
    assert named, "the Dockerfile names no command"
    for name in named:
        assert name in SCRIPTS, f"Dockerfile runs {name!r}, which pyproject.toml does not install"
    # Any riskmesh-<name> the Dockerfile mentions (comments included) is a real script.
    for name in re.findall(r"\briskmesh-[a-z]+\b", DOCKERFILE):
        assert name in SCRIPTS, name


def test_console_script_modules_import_where_they_exist():
    """Servers still being written may lack their module; each one present must import
    and expose main(). Run in a fresh interpreter (MPyC parses sys.argv at import)."""
    modules = sorted({target.split(":")[0] for target in SCRIPTS.values()})
    present = [m for m in modules if (REPO / (m.replace(".", "/") + ".py")).exists()]
    assert "services.gateway.server" in present
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    assert callable(importlib.import_module(m).main), m\n"
    done = subprocess.run([sys.executable, "-c", code, *present], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_multi_stage_slim_locked_non_root():
    instructions = dockerfile_instructions()
    froms = [args for instr, args in instructions if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE)
    assert base and re.fullmatch(
        r"(docker\.io/library/)?python:3\.11-slim(-\w+)?@sha256:[0-9a-f]{64}", base.group(1)
    ), "base pinned by digest"
    runs = " ".join(args for instr, args in instructions if instr == "RUN")
    assert "install --no-deps --require-hashes --only-binary=:all: -r requirements.lock" in runs
    assert "requirements-dev.lock" not in DOCKERFILE, "the image installs the runtime set only"
    assert "useradd" in runs and "--uid 10001" in runs
    users = [args for instr, args in instructions if instr == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "the runtime stage runs as uid 10001"
    # No key, certificate or local state is copied in; every COPY source exists.
    for instr, args in instructions:
        if instr == "COPY" and "--from=" not in args:
            for src in exec_form(args)[:-1]:
                assert not re.search(r"\.(pem|key|crt)$|\.riskmesh|k8s-secrets|\.venv", src), src
                assert (REPO / src).exists(), f"COPY {src}: no such path"


# --- lock files ------------------------------------------------------------------------

DEV_ONLY = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "scikit-learn",
    "scipy",
    "matplotlib",
    "grpcio-tools",
    "buf-bin",
    "kubernetes-validate",
    "mypy-protobuf",
    "psutil",
    "uv",
}


def locked(name: str) -> dict[str, tuple[str, int]]:
    """{package: (version, number of hashes)} of a lock file written by `make lock`."""
    text = (REPO / name).read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s+\\\n\s+--hash=sha256:[0-9a-f]{64})*)", text, re.M)
    return {pkg.lower(): (version, ext.count("--hash=sha256:")) for pkg, version, ext in entries}


def test_runtime_lock_holds_no_dev_tools_and_every_pin_has_hashes():
    runtime, dev, build = (
        locked("requirements.lock"),
        locked("requirements-dev.lock"),
        locked("requirements-build.lock"),
    )
    assert {"grpcio", "numpy", "mpyc", "cryptography", "opentelemetry-sdk"} <= set(runtime)
    assert not DEV_ONLY & set(runtime), f"dev tools in the runtime lock: {sorted(DEV_ONLY & set(runtime))}"
    assert DEV_ONLY - {"scipy"} <= set(dev)
    assert {"pip", "setuptools", "wheel"} <= set(build)
    for name, lock in (
        ("requirements.lock", runtime),
        ("requirements-dev.lock", dev),
        ("requirements-build.lock", build),
    ):
        assert all(hashes for _, hashes in lock.values()), f"{name}: a pin without --hash"
        assert len(lock) == (REPO / name).read_text().count("=="), f"{name}: an entry this parser missed"
    # Developers test exactly the versions the image ships.
    for pkg, (version, _) in runtime.items():
        assert dev[pkg][0] == version, f"{pkg}: {version} in the image, {dev[pkg][0]} in the dev venv"


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins, `!` re-includes,
    a pattern matching a parent directory covers everything below it."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            "(.*/)?"
            if tok == "**/"
            else ".*"
            if tok == "**"
            else "[^/]*"
            if tok == "*"
            else "[^/]"
            if tok == "?"
            else re.escape(tok)
            for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_keys_state_and_venv_out_of_the_build_context():
    for path in [
        ".venv/bin/python",
        ".riskmesh/pki/insurer/ca.key",
        ".riskmesh/pki/insurer/gateway.pem",
        "k8s-secrets/insurer-gateway-tls.yaml",
        "services/mesh/stray.key",
        "riskmesh/v1/stray.pem",
        "services/mesh/__pycache__/config.cpython-311.pyc",
        "tests/unit/mesh/test_config.py",
        "test-artifacts/run.log",
        ".git/config",
        ".pytest_cache/v/cache",
        ".hypothesis/examples/x",
        "k8s/base/kustomization.yaml",
    ]:
        assert dockerignore_excludes(path), f"{path} would enter the image build context"
    tracked = subprocess.run(
        ["git", "ls-files", "riskmesh", "services"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for path in ["requirements.lock", "requirements-build.lock", "pyproject.toml", "README.md", *tracked]:
        if not path.endswith((".pem", ".key")):
            assert not dockerignore_excludes(path), f"{path} is needed by the build but ignored"


# --- a gateway started the way its pod starts it ------------------------------------------


def test_gateway_starts_with_its_pods_command_env_config_and_certificates(tmp_path):
    """Materialise the insurer gateway pod's files under a temporary root (ConfigMap,
    Secret items as exported by `riskmesh pki export-k8s`), run its command with its
    environment re-rooted there (and loopback ports, reserved by this test
    in a [ports] table), and wait for SERVING."""
    org = "insurer"
    docs = render(f"overlays/{org}")
    (dep,) = [d for d in of_kind(docs, "Deployment") if component(d) == "gateway"]
    (cm,) = of_kind(docs, "ConfigMap")
    (container,) = containers(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    pki = tmp_path / "pki"
    init_pki(pki, tuple(OVERLAYS))
    secrets = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in export_k8s(pki, org, tmp_path / "secrets")
    }
    ports = {"mtls": reserve_port(), "health": reserve_port()}
    root = tmp_path / "pod"
    for mount in container["volumeMounts"]:
        where = root / mount["mountPath"].lstrip("/")
        source = volumes[mount["name"]]
        where.mkdir(parents=True, exist_ok=True)
        if "configMap" in source:
            for item in source["configMap"]["items"]:
                text = cm["data"][item["key"]]
                for name, fingerprint in ca_fingerprints(
                    pki, tuple(OVERLAYS)
                ).items():  # the operator fills in the pins
                    text = text.replace(f"FILL-IN-{name}-ca-sha256", fingerprint)
                (where / item["path"]).write_text(
                    f"{text}\n[ports]\ngateway = {{ mtls = {ports['mtls']}, health = {ports['health']} }}\n"
                )
        elif "secret" in source:
            data = secrets[source["secret"]["secretName"]]["data"]
            for item in source["secret"]["items"]:
                (where / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in ("RISKMESH_CONFIG", "RISKMESH_PKI_DIR", "RISKMESH_STATE_DIR"):
        env[name] = str(root / env[name].lstrip("/"))
    env["RISKMESH_BIND_HOST"] = "127.0.0.1"  # the pod binds 0.0.0.0; a test stays on loopback
    script = Path(sys.executable).with_name(container["command"][0])
    assert script.exists(), f"{script}: console script not installed in this venv"
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(script), *container.get("args", [])],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_healthy(f"127.0.0.1:{ports['health']}", timeout=30)
        assert proc.poll() is None
        # The org's own client (k8s/README.md: a pod mounting riskmesh-client-tls as
        # <org>/client.pem, client.key, ca.pem) is admitted over mTLS.
        client = secrets["riskmesh-client-tls"]["data"]
        client_dir = tmp_path / "client" / org
        client_dir.mkdir(parents=True)
        for key, name in {"tls.crt": "client.pem", "tls.key": "client.key", "ca.pem": "ca.pem"}.items():
            (client_dir / name).write_bytes(base64.b64decode(client[key]))
        with GatewayClient.from_pki(f"127.0.0.1:{ports['mtls']}", org, client_dir.parent) as gateway:
            info = gateway.get_info()
        assert (info.org, info.caller_identity) == (org, f"spiffe://{org}/client")
        # Its state went to the state volume.
        assert any((root / "var/lib/riskmesh").iterdir())
    except BaseException:
        proc.kill()
        proc.wait()
        pytest.fail(f"gateway did not come up:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
