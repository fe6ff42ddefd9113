"""Podman for the project: the tools, the Python base image and the riskmesh image.

`make image` runs `python -m services.tools.containers image`. The base image is the
Dockerfile's pinned `PYTHON_IMAGE` when a registry serves it; where none is reachable
(this project's machines), a Debian bookworm root filesystem made with debootstrap,
with Debian's Python 3.11, imported once into podman's store and reused afterwards.

Every podman call goes through `podman()`, which points podman at the repo's
`k8s/podman/containers.conf` (runc, and default ulimits the host allows).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import typer
import yaml

from services.tools.kubeplay import HostFile, PlayBundle

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "k8s" / "podman" / "containers.conf"
DEFAULT_TAG = "localhost/riskmesh:dev"
LOCAL_BASE_TAG = "localhost/riskmesh-python-base:bookworm-3.11"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
# Debian packages the project's container work needs (installed by `ensure_tools`).
APT_PACKAGES = (
    "podman",
    "runc",
    "debootstrap",
    "netavark",
    "aardvark-dns",
    "iptables",
    "catatonit",
    "conmon",
    "uidmap",
)
# What a base made with debootstrap carries beyond `minbase`: Python, venv, and nothing else.
BASE_PACKAGES = ("python3", "python3-venv")
# Build-time only: the CA bundle an intercepting proxy needs, never copied into the image.
CA_SECRET_ID = "ca-bundle"


class ContainerError(RuntimeError):
    pass


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, capture: bool = True, timeout: float | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess:
    """Run `podman <args>` with the project's containers.conf."""
    done = subprocess.run(["podman", *args], env=podman_env(), capture_output=capture, timeout=timeout, input=input)
    if check and done.returncode != 0:
        err = (done.stderr or b"").decode(errors="replace").strip() if capture else ""
        raise ContainerError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {err[-2000:]}")
    return done


# --- tools ----------------------------------------------------------------------------


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "runc", "debootstrap", "iptables") if shutil.which(tool) is None]


def ensure_tools() -> None:
    """Install podman, runc and debootstrap from Debian when any is missing (root only)."""
    if not missing_tools():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ContainerError(f"missing {', '.join(missing_tools())}: install Debian's {' '.join(APT_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], env=env, check=True)
    subprocess.run(
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], env=env, check=True
    )
    if missing_tools():
        raise ContainerError(f"still missing after apt-get install: {', '.join(missing_tools())}")


# --- images ---------------------------------------------------------------------------


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_id(ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.decode().strip()


def image_size_mb(ref: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.decode().strip()) / 1e6


def dockerfile_base() -> str:
    """The Dockerfile's default PYTHON_IMAGE (pinned by digest)."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.M)
    if not match:
        raise ContainerError("the Dockerfile has no `ARG PYTHON_IMAGE=` default")
    return match.group(1)


def pull(ref: str, timeout: float = 120) -> bool:
    """True when a registry served `ref` (fails fast where no registry resolves)."""
    try:
        return podman("pull", "--quiet", ref, check=False, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def build_local_base(tag: str = LOCAL_BASE_TAG, suite: str = "bookworm") -> str:
    """A minimal Debian root filesystem with Python 3.11, imported into podman as `tag`."""
    with tempfile.TemporaryDirectory(prefix="riskmesh-base-") as tmp:
        root = Path(tmp) / "rootfs"
        include = ",".join(BASE_PACKAGES)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root), DEBIAN_MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Security and point-release updates, then drop what a server never needs.
        (root / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} {suite} main\ndeb {DEBIAN_MIRROR} {suite}-updates main\n"
            f"deb {DEBIAN_SECURITY} {suite}-security main\n"
        )
        chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "-y", "-qq", "upgrade"], ["apt-get", "clean"]):
            subprocess.run(["chroot", str(root), *command], env=chroot_env, check=True, stdout=subprocess.DEVNULL)
        for path in (
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
            "var/cache/debconf/templates.dat-old",
            "var/log",
        ):
            target = root / path
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
            elif target.exists():
                target.unlink()
        (root / "usr/bin/python").symlink_to("python3")
        tar = subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-c", "."], check=True, capture_output=True
        ).stdout
        changes = [
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            'CMD ["python3"]',
        ]
        podman("import", *changes, "-", tag, input=tar)
    return tag


def resolve_base(base: str | None = None) -> str:
    """The base to build FROM: explicit, else the pinned registry image, else the local Debian base."""
    if base:
        return base
    pinned = dockerfile_base()
    if image_exists(pinned) or pull(pinned):
        return pinned
    print(f"no registry served {pinned}: building FROM the local Debian base {LOCAL_BASE_TAG}", file=sys.stderr)
    if not image_exists(LOCAL_BASE_TAG):
        build_local_base(LOCAL_BASE_TAG)
    return image_id(LOCAL_BASE_TAG)


def ca_bundle() -> Path | None:
    """The CA bundle the build's HTTPS needs, when the host configures one."""
    for name in ("RISKMESH_BUILD_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build_image(tag: str = DEFAULT_TAG, base: str | None = None) -> str:
    """Build the Dockerfile as `tag` (podman's layer cache makes an unchanged rebuild quick)."""
    ensure_tools()
    args = ["build", "--layers", "--tag", tag, "--build-arg", f"PYTHON_IMAGE={resolve_base(base)}"]
    bundle = ca_bundle()
    if bundle:
        args += ["--secret", f"id={CA_SECRET_ID},src={bundle}"]
    podman(*args, str(REPO), capture=False)
    return tag


# --- running translated overlays (services/tools/kubeplay.py) --------------------------


def write_host_files(files: Iterable[HostFile]) -> None:
    """Decoded Secret items on the host, owned root:<fsGroup> with the volume's mode."""
    for f in files:
        f.path.parent.mkdir(parents=True, exist_ok=True)
        f.path.parent.chmod(0o755)
        f.path.write_bytes(f.data)
        os.chown(f.path, 0, f.gid)
        f.path.chmod(f.mode)


def network_create(name: str) -> None:
    if podman("network", "exists", name, check=False).returncode != 0:
        podman("network", "create", name)


def network_remove(name: str) -> None:
    podman("network", "rm", "--force", name, check=False)


def play(bundle: PlayBundle, network: str, workdir: Path) -> Path:
    """Write the bundle's host files and YAML, then `podman kube play` it on `network`."""
    remove(bundle)
    write_host_files(bundle.files)
    manifest = workdir / f"{bundle.org}.kube.yaml"
    manifest.write_text(yaml.safe_dump_all(bundle.documents, sort_keys=False))
    podman("kube", "play", "--network", network, str(manifest))
    return manifest


def remove(bundle: PlayBundle) -> None:
    """Remove the bundle's pods and volumes (whatever a previous run left)."""
    if bundle.pods:
        # Killed first: `pod rm --force` stops containers one by one, several seconds each.
        podman("pod", "kill", *bundle.pods, check=False)
        podman("pod", "rm", "--force", "--ignore", "--time", "0", *bundle.pods, check=False)
    if bundle.volumes:
        podman("volume", "rm", "--force", *bundle.volumes, check=False)
    configmaps = [d["metadata"]["name"] for d in bundle.documents if d["kind"] == "ConfigMap"]
    if configmaps:  # kube play keeps a ConfigMap's content in a volume of that name
        podman("volume", "rm", "--force", *configmaps, check=False)


def remove_prefixed(prefix: str) -> None:
    """Remove every pod and volume whose name starts with `prefix` (a test run's leftovers)."""
    pods = podman("pod", "ps", "--format", "{{.Name}}", check=False).stdout.decode().split()
    pods = [name for name in pods if name.startswith(prefix)]
    if pods:
        podman("pod", "rm", "--force", "--ignore", "--time", "0", *pods, check=False)
    volumes = podman("volume", "ls", "--format", "{{.Name}}", check=False).stdout.decode().split()
    volumes = [name for name in volumes if name.startswith(prefix)]
    if volumes:
        podman("volume", "rm", "--force", *volumes, check=False)


def import_files(volume: str, files: Mapping[str, bytes], uid: int = 10001) -> None:
    """Put files (read-only, owned by `uid`) into a named volume."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, 0o444
            tar.addfile(info, io.BytesIO(data))
    podman("volume", "import", volume, "-", input=buf.getvalue())


def inspect(container: str) -> dict:
    return json.loads(podman("inspect", "--type", "container", container).stdout)[0]


HEALTH_CHECK = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
"""


def health_inside(container: str, port: int, timeout: float = 60) -> str:
    """The grpc.health.v1 status a server answers on its health port, asked from inside its
    own container (what a kubelet probe sees), retried until SERVING or `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done = podman("exec", container, "python", "-c", HEALTH_CHECK, f"127.0.0.1:{port}", check=False)
        status = done.stdout.decode().strip()
        if status == "SERVING" or time.monotonic() > deadline:
            return status or done.stderr.decode(errors="replace").strip()[-500:]
        time.sleep(0.5)


HTTP_GET = """
import sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
try:
    reply = urllib.request.urlopen(request, timeout=5)
except urllib.error.HTTPError as refused:
    reply = refused
print(reply.status)
sys.stdout.write(reply.read().decode())
"""


def http_get_inside(
    container: str, url: str, headers: Mapping[str, str] | None = None, timeout: float = 60
) -> tuple[int, str]:
    """(status, body) of GET `url` from inside `container` (the console's probes and pages),
    retried while nothing answers yet, until `timeout`."""
    deadline = time.monotonic() + timeout
    args = [f"{k}: {v}" for k, v in (headers or {}).items()]
    while True:
        done = podman("exec", container, "python", "-c", HTTP_GET, url, *args, check=False)
        if done.returncode == 0:
            status, _, body = done.stdout.decode().partition("\n")
            return int(status), body
        if time.monotonic() > deadline:
            raise ContainerError(f"GET {url} in {container}: {done.stderr.decode(errors='replace').strip()[-500:]}")
        time.sleep(0.5)


def logs(container: str) -> str:
    done = podman("logs", container, check=False)
    return (done.stdout + done.stderr).decode(errors="replace")


cli = typer.Typer(help="Container images for riskmesh (podman).", no_args_is_help=True)


@cli.command()
def tools() -> None:
    """Install podman, runc and debootstrap when missing."""
    ensure_tools()


@cli.command()
def image(
    tag: str = typer.Option(DEFAULT_TAG),
    base: str = typer.Option("", help="base image (default: pinned, else local Debian)"),
) -> None:
    """Build the runtime image and print its size."""
    started = time.monotonic()
    build_image(tag, base or None)
    print(f"{tag}: {image_size_mb(tag):.0f} MB, built in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    cli()
