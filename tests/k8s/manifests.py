"""Helpers for the manifest tests: render a kustomization, read the objects, and model
the NetworkPolicies as the set of (from, to, port) edges they admit.

The expected edges are derived from the paths of docs/design.md (Security) and the server
table of services.mesh.config, so a policy that admits one edge too many or too few
fails a test.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services.mesh.config import CRYPTO_WORKER, HEALTH_OFFSET, ROLE_SERVERS, ROLE_WORKERS, SERVER_OFFSETS

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
BASE_PORT = 7100  # every org uses the same base port in Kubernetes (k8s/README.md)

OVERLAYS = {"insurer": "data_owner", "hospital": "data_owner", "helper": "helper"}

# The web console (services/console, k8s/base/console.yaml): every org runs one. It serves
# HTTP to the org's ingress controller only and answers probes on a port of its own.
CONSOLE = "console"
CONSOLE_HTTP_PORT = 8080
CONSOLE_HEALTH_PORT = 8090
INGRESS_NAMESPACE = "ingress-nginx"

# The documented example address range of each org (TEST-NET-1/2/3, RFC 5737).
EXAMPLE_RANGES = {"insurer": "192.0.2.0/24", "hospital": "198.51.100.0/24", "helper": "203.0.113.0/24"}
TEST_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
PLACEHOLDER_CIDR = "255.255.255.255/32"  # the base's match-nothing range; no overlay may keep it

# Paths inside one org (caller, callee); "client" is a pod labelled riskmesh.io/client=true
# (the org's own systems, certificate spiffe://<org>/client), which may only call the gateway.
IN_ORG_PATHS = [
    ("client", "gateway"),
    ("gateway", "encryption"),
    ("gateway", "intersection"),
    ("gateway", "resharing"),
    ("gateway", "lasso"),
    ("lasso", "resharing"),
    ("intersection", "resharing"),
    ("console", "gateway"),
    # A data owner's crypto workers serve its encryption and resharing servers only, and dial nothing.
    ("encryption", CRYPTO_WORKER),
    ("resharing", CRYPTO_WORKER),
]
# The only cross-org paths (docs/design.md, Security): caller server -> callee server.
CROSS_ORG_PATHS = [
    ("gateway", "gateway"),
    ("encryption", "intersection"),
    ("intersection", "resharing"),
    ("lasso", "lasso"),
]
CLIENT_LABELS = {"riskmesh.io/client": "true"}
OTLP_NAMESPACE, OTLP_PORT = "observability", 4317  # where each org's collector listens (k8s/README.md)


def deployed(role: str) -> tuple[str, ...]:
    """The Deployments of an org with this role: its servers, its crypto workers and the console."""
    return (*ROLE_SERVERS[role], *ROLE_WORKERS[role], CONSOLE)


def mtls_port(server: str) -> int:
    return BASE_PORT + SERVER_OFFSETS[server]


def health_port(server: str) -> int:
    return BASE_PORT + HEALTH_OFFSET + SERVER_OFFSETS[server]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl (with its built-in kustomize) is needed to render k8s/; install it")
    return path


@cache
def render_text(target: str) -> str:
    """`kubectl kustomize k8s/<target>` (target: "base" or "overlays/<org>")."""
    done = subprocess.run([kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/{target} failed:\n{done.stderr}")
    return done.stdout


def render(target: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(target)) if doc]


def of_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(deployment: dict[str, Any]) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def in_test_net(address: str) -> bool:
    net = ipaddress.ip_network(address, strict=False)
    return any(net.subnet_of(t) for t in TEST_NETS)


# --- NetworkPolicy model ------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """One kind of pod in the namespace: a server, or the org's client."""

    name: str
    labels: dict[str, str]
    ports: dict[str, int]  # named container ports

    def __hash__(self) -> int:
        return hash(self.name)


# A peer of an edge: ("pod", name) in the namespace, ("cidr", range), ("ns", namespace) or ("any",).
Peer = tuple[str, ...]
Edge = tuple[Peer, Peer, int | str, str]  # (from, to, port or "*", protocol)


def pods_of(docs: list[dict[str, Any]]) -> dict[str, Pod]:
    pods = {}
    for dep in of_kind(docs, "Deployment"):
        ports = {p["name"]: p["containerPort"] for c in containers(dep) for p in c.get("ports", []) if "name" in p}
        pods[component(dep)] = Pod(component(dep), dep["spec"]["template"]["metadata"]["labels"], ports)
    pods["client"] = Pod("client", CLIENT_LABELS, {})
    return pods


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise AssertionError(f"unsupported selector (keep to matchLabels): {selector}")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peers(entries: list[dict[str, Any]] | None, pods: dict[str, Pod]) -> list[Peer]:
    if not entries:
        return [("any",)]
    out: list[Peer] = []
    for entry in entries:
        if "ipBlock" in entry:
            assert set(entry) == {"ipBlock"} and "except" not in entry["ipBlock"], entry
            out.append(("cidr", entry["ipBlock"]["cidr"]))
        elif "namespaceSelector" in entry:
            assert set(entry) == {"namespaceSelector"}, f"namespace+pod selectors not modelled: {entry}"
            labels = entry["namespaceSelector"]["matchLabels"]
            assert set(labels) == {"kubernetes.io/metadata.name"}, entry
            out.append(("ns", labels["kubernetes.io/metadata.name"]))
        else:
            assert set(entry) == {"podSelector"}, entry
            out += [("pod", p.name) for p in pods.values() if selects(entry["podSelector"], p.labels)]
    return out


def _ports(ports: list[dict[str, Any]] | None, pod: Pod | None) -> list[tuple[int | str, str]]:
    if not ports:
        return [("*", "*")]
    out = []
    for p in ports:
        assert "endPort" not in p, p
        port = p["port"]
        if isinstance(port, str):  # a named port of the selected (ingress) pod
            assert pod is not None, f"named port {port!r} on an egress rule"
            if port not in pod.ports:
                continue  # this pod has no such port: the rule admits nothing here
            port = pod.ports[port]
        out.append((port, p.get("protocol", "TCP")))
    return out


@dataclass
class PolicyModel:
    ingress: set[Edge]
    egress: set[Edge]
    isolated_ingress: set[str]  # pods selected by some Ingress policy (default deny applies)
    isolated_egress: set[str]


def model(docs: list[dict[str, Any]]) -> PolicyModel:
    pods = pods_of(docs)
    m = PolicyModel(set(), set(), set(), set())
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        selected = [p for p in pods.values() if selects(spec["podSelector"], p.labels)]
        types = spec.get("policyTypes") or ["Ingress"]
        if "Ingress" in types:
            for pod in selected:
                m.isolated_ingress.add(pod.name)
                for rule in spec.get("ingress") or []:
                    for peer in _peers(rule.get("from"), pods):
                        for port, proto in _ports(rule.get("ports"), pod):
                            m.ingress.add((peer, ("pod", pod.name), port, proto))
        if "Egress" in types:
            for pod in selected:
                m.isolated_egress.add(pod.name)
                for rule in spec.get("egress") or []:
                    for peer in _peers(rule.get("to"), pods):
                        for port, proto in _ports(rule.get("ports"), None):
                            m.egress.add((("pod", pod.name), peer, port, proto))
    return m


def expected_model(org: str) -> PolicyModel:
    """The edges docs/design.md allows for `org`, with the example peer ranges."""
    servers = {o: set(ROLE_SERVERS[role]) for o, role in OVERLAYS.items()}
    workers = set(ROLE_WORKERS[OVERLAYS[org]])
    here = servers[org] | workers | {"client", CONSOLE}
    m = PolicyModel(set(), set(), set(here), set(here))
    for src, dst in IN_ORG_PATHS:
        if src in here and dst in here:
            m.ingress.add((("pod", src), ("pod", dst), mtls_port(dst), "TCP"))
            m.egress.add((("pod", src), ("pod", dst), mtls_port(dst), "TCP"))
    for src, dst in CROSS_ORG_PATHS:
        for other in OVERLAYS:
            if other == org:
                continue
            if src in servers[other] and dst in servers[org]:  # other -> us
                m.ingress.add((("cidr", EXAMPLE_RANGES[other]), ("pod", dst), mtls_port(dst), "TCP"))
            if src in servers[org] and dst in servers[other]:  # us -> other
                m.egress.add((("pod", src), ("cidr", EXAMPLE_RANGES[other]), mtls_port(dst), "TCP"))
    for server in servers[org] | workers:  # kubelet probes, from the node
        m.ingress.add((("any",), ("pod", server), health_port(server), "TCP"))
    m.ingress.add((("any",), ("pod", CONSOLE), CONSOLE_HEALTH_PORT, "TCP"))
    # People reach the console through the org's ingress controller (SSO) only.
    m.ingress.add((("ns", INGRESS_NAMESPACE), ("pod", CONSOLE), CONSOLE_HTTP_PORT, "TCP"))
    for pod in here:  # name resolution
        for proto in ("UDP", "TCP"):
            m.egress.add((("pod", pod), ("ns", "kube-system"), 53, proto))
    for server in servers[org]:  # traces and metrics to the org's own OpenTelemetry Collector (not the workers)
        m.egress.add((("pod", server), ("ns", OTLP_NAMESPACE), OTLP_PORT, "TCP"))
    return m


def cross_org_callers(org: str) -> dict[str, set[str]]:
    """Callee server at `org` -> the orgs whose servers call it across the org boundary."""
    servers = {o: set(ROLE_SERVERS[role]) for o, role in OVERLAYS.items()}
    out: dict[str, set[str]] = {}
    for src, dst in CROSS_ORG_PATHS:
        for other in OVERLAYS:
            if other != org and src in servers[other] and dst in servers[org]:
                out.setdefault(dst, set()).add(other)
    return out


def cross_org_callees(org: str) -> dict[str, set[tuple[str, str]]]:
    """Caller server at `org` -> the (org, server) it dials across the org boundary."""
    servers = {o: set(ROLE_SERVERS[role]) for o, role in OVERLAYS.items()}
    out: dict[str, set[tuple[str, str]]] = {}
    for src, dst in CROSS_ORG_PATHS:
        for other in OVERLAYS:
            if other != org and src in servers[org] and dst in servers[other]:
                out.setdefault(src, set()).add((other, dst))
    return out
