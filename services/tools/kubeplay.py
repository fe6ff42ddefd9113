"""Translate a rendered overlay (`kubectl kustomize k8s/overlays/<org>`) for `podman kube play`.

The manifests are written for Kubernetes; podman runs Pods from the same YAML with a few
gaps, which this translation closes (and nothing else changes: image, commands,
environment, security contexts, ConfigMap and mounts stay the overlay's own):

- Deployments become Pods named `<org>-<deployment>` (three orgs share one podman host):
  the org's gRPC servers and its web console (`riskmesh-console`, services/console).
- Secret volumes become read-only host directories holding the decoded Secret items
  (files with the volume's mode, group = the pod's fsGroup): `kube play` mounts Secret
  values still base64-encoded and crashes on Secret volumes whose `optional` is unset
  (podman issue 16636).
- The ConfigMap and PersistentVolumeClaims are prefixed with the org, like the pods, and
  each emptyDir volume with its pod: `kube play` (4.3) makes an emptyDir a named volume
  called by the volume's name, which every pod with a `tmp` volume would otherwise share.
- Container ports are dropped (podman would try to publish them; nothing here needs
  that), except the ones the caller publishes on loopback (`kubectl port-forward`'s part).
- Services do not exist under podman, so every address in the org's config (its own
  ClusterIP names, the peers' LoadBalancer addresses) is mapped to the pod's DNS name on
  the shared podman network, through the config's RISKMESH_ADDR_<ORG>_<SERVER> overrides.
- Namespace, ServiceAccount, Service and NetworkPolicy objects are dropped: podman has
  no such things (k8s/README.md says which tests check them instead).
- CA pins left as `FILL-IN-<org>-ca-sha256` placeholders in the config are filled in with
  the fingerprints given, as each operator does with the ones the others sent.
"""

from __future__ import annotations

import base64
import copy
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.mesh.config import SERVER_OFFSETS, parse_config

DROPPED_KINDS = ("Namespace", "ServiceAccount", "Service", "NetworkPolicy")
CONFIG_FILE = "riskmesh.toml"
CONSOLE = "console"  # the org's web console: a Deployment beside the servers, not a mesh server
COMPONENTS = (*SERVER_OFFSETS, CONSOLE)


class TranslationError(ValueError):
    pass


@dataclass(frozen=True)
class HostFile:
    """A file to write on the host before `kube play` (a decoded Secret item)."""

    path: Path
    data: bytes
    mode: int
    gid: int


@dataclass(frozen=True)
class PlayBundle:
    org: str
    documents: list[dict]
    files: list[HostFile]
    pods: list[str]
    volumes: list[str]
    dropped: list[str] = field(default_factory=list)


def pod_name(org: str, deployment: str, prefix: str = "") -> str:
    """`insurer-riskmesh-gateway`; `prefix` keeps concurrent test runs on one host apart."""
    return f"{prefix}{org}-{deployment}"


def server_pod(org: str, server: str, prefix: str = "") -> str:
    """The pod (and DNS name on the podman network) of <org>'s <server>."""
    return pod_name(org, f"riskmesh-{server}", prefix)


def address_overrides(config_toml: str, prefix: str = "") -> dict[str, str]:
    """RISKMESH_ADDR_<ORG>_<SERVER> for every address in the config, pointing at pod DNS names
    (same port: every pod listens on its own org's ports)."""
    config = parse_config(tomllib.loads(config_toml), env={}, base=Path("/"))
    env = {}
    for endpoint in [config.self_endpoint, *config.peers.values()]:
        for server, address in endpoint.addresses.items():
            port = address.rsplit(":", 1)[1]
            env[f"RISKMESH_ADDR_{endpoint.org.upper().replace('-', '_')}_{server.upper().replace('-', '_')}"] = (
                f"{server_pod(endpoint.org, server, prefix)}:{port}"
            )
    return env


PIN_PLACEHOLDER = re.compile(r"FILL-IN-([a-z][a-z0-9-]*)-ca-sha256")


def fill_pins(config_toml: str, ca_pins: Mapping[str, str]) -> str:
    """The config with each `FILL-IN-<org>-ca-sha256` replaced by <org>'s fingerprint."""
    missing = sorted({org for org in PIN_PLACEHOLDER.findall(config_toml) if org not in ca_pins})
    if missing and ca_pins:
        raise TranslationError(f"no CA fingerprint given for {', '.join(missing)}")
    return PIN_PLACEHOLDER.sub(lambda m: ca_pins.get(m.group(1), m.group(0)), config_toml)


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    data.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return data


def _only(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        raise TranslationError(f"expected exactly one {kind}, found {len(found)}")
    return found[0]


def translate(
    docs: Iterable[Mapping[str, Any]],
    org: str,
    secrets: Mapping[str, Mapping[str, Any]],
    image: str,
    secrets_root: Path,
    publish: Mapping[tuple[str, str], int] | None = None,
    extra_env: Mapping[str, str] | None = None,
    prefix: str = "",
    ca_pins: Mapping[str, str] | None = None,
) -> PlayBundle:
    """The `kube play` documents and host files for one org's rendered overlay.

    secrets: Secret manifests by name (as `riskmesh pki export-k8s` writes them).
    publish: {(deployment, port name): loopback host port} to publish.
    extra_env: more environment for every container (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).
    prefix: before every pod, volume and ConfigMap name (and so every DNS name).
    ca_pins: {org: CA fingerprint} for the config's FILL-IN placeholders.
    """
    docs = [copy.deepcopy(dict(d)) for d in docs]
    publish = dict(publish or {})
    configmap = _only(docs, "ConfigMap")
    if CONFIG_FILE not in configmap.get("data", {}):
        raise TranslationError(f"the ConfigMap has no {CONFIG_FILE}")
    configmap["data"][CONFIG_FILE] = fill_pins(configmap["data"][CONFIG_FILE], ca_pins or {})
    env_add = {**address_overrides(configmap["data"][CONFIG_FILE], prefix), **dict(extra_env or {})}
    renamed_configmap = {configmap["metadata"]["name"]: pod_name(org, configmap["metadata"]["name"], prefix)}
    claims = {
        d["metadata"]["name"]: pod_name(org, d["metadata"]["name"], prefix)
        for d in docs
        if d["kind"] == "PersistentVolumeClaim"
    }

    out: list[dict] = []
    files: list[HostFile] = []
    pods: list[str] = []
    scratch: list[str] = []
    dropped: list[str] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in DROPPED_KINDS:
            dropped.append(f"{kind}/{name}")
        elif kind == "ConfigMap":
            doc["metadata"] = {"name": renamed_configmap[name]}
            out.append(doc)
        elif kind == "PersistentVolumeClaim":
            doc["metadata"] = {"name": claims[name], "labels": doc["metadata"].get("labels", {})}
            out.append(doc)
        elif kind == "Deployment":
            pod, pod_files = _pod(
                doc,
                pod_name(org, name, prefix),
                secrets,
                image,
                secrets_root,
                renamed_configmap,
                claims,
                publish,
                env_add,
            )
            pods.append(pod["metadata"]["name"])
            files += pod_files
            scratch += [v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v]
            out.append(pod)
        else:
            raise TranslationError(f"no translation for {kind}/{name}")
    unused = {deployment for deployment, _ in publish} - {
        d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"
    }
    if unused:
        raise TranslationError(f"cannot publish ports of unknown deployments {sorted(unused)}")
    # PVCs first so that kube play creates the volumes before the pods that mount them.
    out.sort(key=lambda d: {"ConfigMap": 0, "PersistentVolumeClaim": 1}.get(d["kind"], 2))
    return PlayBundle(org, out, files, pods, sorted([*claims.values(), *scratch]), dropped)


def _pod(
    deployment: dict,
    name: str,
    secrets: Mapping[str, Mapping[str, Any]],
    image: str,
    secrets_root: Path,
    configmaps: Mapping[str, str],
    claims: Mapping[str, str],
    publish: Mapping[tuple[str, str], int],
    env_add: Mapping[str, str],
) -> tuple[dict, list[HostFile]]:
    template = deployment["spec"]["template"]
    spec = template["spec"]
    fs_group = int(spec.get("securityContext", {}).get("fsGroup", 0))
    files: list[HostFile] = []
    scratch = {v["name"]: f"{name}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v}
    for volume in spec.get("volumes", []):
        if volume["name"] in scratch:
            volume["name"] = scratch[volume["name"]]
        elif "secret" in volume:
            source = volume.pop("secret")
            secret_name = source["secretName"]
            if secret_name not in secrets:
                raise TranslationError(f"{name}: Secret {secret_name!r} not supplied")
            data = secret_data(secrets[secret_name])
            directory = secrets_root / name / volume["name"]
            items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
            for item in items:
                if item["key"] not in data:
                    raise TranslationError(f"{name}: Secret {secret_name!r} has no key {item['key']!r}")
                mode = int(item.get("mode", source.get("defaultMode", 0o644)))
                files.append(HostFile(directory / item["path"], data[item["key"]], mode, fs_group))
            volume["hostPath"] = {"path": str(directory), "type": "Directory"}
        elif "configMap" in volume:
            volume["configMap"]["name"] = configmaps[volume["configMap"]["name"]]
        elif "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = claims[volume["persistentVolumeClaim"]["claimName"]]
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = scratch.get(mount["name"], mount["name"])
        ports = container.pop("ports", [])
        published = [
            {
                "containerPort": p["containerPort"],
                "hostPort": publish[(deployment["metadata"]["name"], p["name"])],
                "hostIP": "127.0.0.1",
            }
            for p in ports
            if (deployment["metadata"]["name"], p.get("name")) in publish
        ]
        if published:
            container["ports"] = published
        container["image"] = image
        container["imagePullPolicy"] = "Never"
        env = [e for e in container.get("env", []) if e["name"] not in env_add]
        container["env"] = env + [{"name": k, "value": v} for k, v in sorted(env_add.items())]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
        "spec": spec,
    }
    return pod, files


def server_of(pod: str, org: str, prefix: str = "") -> str:
    """`insurer-riskmesh-gateway` -> `gateway`; `insurer-riskmesh-console` -> `console`."""
    server = pod.removeprefix(f"{prefix}{org}-riskmesh-")
    if server not in COMPONENTS:
        raise TranslationError(f"{pod} is not a riskmesh pod of {org}")
    return server
