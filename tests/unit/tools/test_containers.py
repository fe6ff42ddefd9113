"""The podman helpers that need no podman (services/tools/containers.py)."""

from __future__ import annotations

import os
import re
import stat

import pytest

from services.tools import containers
from services.tools.kubeplay import HostFile


def test_the_dockerfile_base_is_pinned_by_digest():
    pinned = r"docker\.io/library/python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}"
    assert re.fullmatch(pinned, containers.dockerfile_base())


def test_the_build_ca_bundle_comes_from_the_first_configured_existing_file(tmp_path, monkeypatch):
    bundle, other = tmp_path / "ca.pem", tmp_path / "other.pem"
    bundle.write_text("x")
    other.write_text("y")
    for name in ("RISKMESH_BUILD_CA_BUNDLE", "PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert containers.ca_bundle() is None
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    assert containers.ca_bundle() == other
    monkeypatch.setenv("RISKMESH_BUILD_CA_BUNDLE", str(tmp_path / "missing.pem"))
    assert containers.ca_bundle() == other  # a named file that does not exist is skipped
    monkeypatch.setenv("RISKMESH_BUILD_CA_BUNDLE", str(bundle))
    assert containers.ca_bundle() == bundle


def test_podman_gets_the_projects_settings():
    conf = containers.CONTAINERS_CONF.read_text()
    assert containers.podman_env()["CONTAINERS_CONF"] == str(containers.CONTAINERS_CONF)
    assert 'runtime = "runc"' in conf
    limits = dict(re.findall(r'"(nofile|nproc)=(\d+):\d+"', conf))
    assert int(limits["nofile"]) <= 20000 and int(limits["nproc"]) <= 32768


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to the pod's group needs root")
def test_secret_files_are_written_with_their_mode_and_group(tmp_path):
    target = tmp_path / "pod" / "pki" / "gateway.key"
    containers.write_host_files([HostFile(target, b"key", 0o440, 10001)])
    info = target.stat()
    assert target.read_bytes() == b"key" and stat.S_IMODE(info.st_mode) == 0o440 and info.st_gid == 10001
