"""Podman for the project: the tools, the Python base image and the riskmesh image.

`make image` runs `python -m services.tools.containers image`. The base image is the
Dockerfile's pinned `PYTHON_IMAGE` when a registry serves it; where none is reachable
(this project's machines), a Debian bookworm root filesystem made with debootstrap,
with Debian's Python 3.11, imported once into podman's store and reused afterwards.

Every podman call goes through `podman()`, which points podman at the repo's
`k8s/podman/containers.conf` (runc, and default ulimits the host allows).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "k8s" / "podman" / "containers.conf"
DEFAULT_TAG = "localhost/riskmesh:dev"
LOCAL_BASE_TAG = "localhost/riskmesh-python-base:bookworm-3.11"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
# Debian packages the project's container work needs (installed by `ensure_tools`).
APT_PACKAGES = ("podman", "runc", "debootstrap", "netavark", "aardvark-dns", "iptables", "catatonit", "conmon", "uidmap")
# What a base made with debootstrap carries beyond `minbase`: Python, venv, and nothing else.
BASE_PACKAGES = ("python3", "python3-venv")
# Build-time only: the CA bundle an intercepting proxy needs, never copied into the image.
CA_SECRET_ID = "ca-bundle"


class ContainerError(RuntimeError):
    pass


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:
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
    subprocess.run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES], env=env, check=True)
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
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={include}", suite, str(root), DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
        # Security and point-release updates, then drop what a server never needs.
        (root / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} {suite} main\ndeb {DEBIAN_MIRROR} {suite}-updates main\n"
            f"deb {DEBIAN_SECURITY} {suite}-security main\n"
        )
        chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "-y", "-qq", "upgrade"], ["apt-get", "clean"]):
            subprocess.run(["chroot", str(root), *command], env=chroot_env, check=True, stdout=subprocess.DEVNULL)
        for path in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/debconf/templates.dat-old", "var/log"):
            target = root / path
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
            elif target.exists():
                target.unlink()
        (root / "usr/bin/python").symlink_to("python3")
        tar = subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-c", "."], check=True, capture_output=True).stdout
        changes = ["--change", "ENV LANG=C.UTF-8", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "--change", 'CMD ["python3"]']
        podman("import", *changes, "-", tag, input=tar)
    return tag


def resolve_base(base: str | None = None) -> str:
    """The base to build FROM: explicit, else the pinned registry image, else the local Debian base."""
    if base:
        return base
    pinned = dockerfile_base()
    if image_exists(pinned) or pull(pinned):
        return pinned
    if not image_exists(LOCAL_BASE_TAG):
        print(f"no registry serves {pinned}: building {LOCAL_BASE_TAG} with debootstrap", file=sys.stderr)
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


cli = typer.Typer(help="Container images for riskmesh (podman).", no_args_is_help=True)


@cli.command()
def tools() -> None:
    """Install podman, runc and debootstrap when missing."""
    ensure_tools()


@cli.command()
def image(tag: str = typer.Option(DEFAULT_TAG), base: str = typer.Option("", help="base image (default: pinned, else local Debian)")) -> None:
    """Build the runtime image and print its size."""
    started = time.monotonic()
    build_image(tag, base or None)
    print(f"{tag}: {image_size_mb(tag):.0f} MB, built in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    cli()
