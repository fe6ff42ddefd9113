"""The overlay -> `podman kube play` translation (services/tools/kubeplay.py), on the real
rendered overlays and the Secrets `riskmesh pki export-k8s` writes. No podman needed:
tests/containers plays the result."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from services.mesh.config import HEALTH_OFFSET, SERVER_OFFSETS, parse_config
from services.tools.kubeplay import DROPPED_KINDS, TranslationError, fill_pins, server_of, server_pod, translate
from services.tools.pki import export_k8s, init_pki
from tests.k8s.manifests import BASE_PORT, CONSOLE, CONSOLE_HEALTH_PORT, CONSOLE_HTTP_PORT, OVERLAYS, of_kind, render

IMAGE = "localhost/riskmesh:test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    init_pki(out, tuple(OVERLAYS))
    return out


@pytest.fixture(scope="module")
def secrets(pki, tmp_path_factory) -> dict[str, dict[str, dict]]:
    out = {}
    for org in OVERLAYS:
        paths = export_k8s(pki, org, tmp_path_factory.mktemp(f"secrets-{org}"), f"riskmesh-{org}")
        out[org] = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text()) for p in paths)}
    return out


@pytest.fixture(scope="module")
def bundles(secrets, tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    return {org: translate(render(f"overlays/{org}"), org, secrets[org], IMAGE, root / org) for org in OVERLAYS}


def pods(bundle) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in bundle.documents if d["kind"] == "Pod"}


def test_each_deployment_becomes_one_pod_named_after_its_org_and_nothing_podman_lacks_remains(bundles):
    for org, bundle in bundles.items():
        docs = render(f"overlays/{org}")
        deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
        assert set(pods(bundle)) == {f"{org}-{name}" for name in deployments}
        assert {server_of(p, org) for p in pods(bundle)} == {name.removeprefix("riskmesh-") for name in deployments}
        assert {d["kind"] for d in bundle.documents} == {"Pod", "ConfigMap", "PersistentVolumeClaim"}
        assert sorted(bundle.dropped) == sorted(
            f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in DROPPED_KINDS
        )
        # kube play creates the volumes before the pods that mount them.
        kinds = [d["kind"] for d in bundle.documents]
        assert kinds.index("Pod") > max(i for i, k in enumerate(kinds) if k != "Pod")


def test_what_runs_is_the_overlays_own_command_security_and_mounts(bundles):
    for org, bundle in bundles.items():
        deployments = {f"{org}-{d['metadata']['name']}": d for d in of_kind(render(f"overlays/{org}"), "Deployment")}
        for name, pod in pods(bundle).items():
            want = deployments[name]["spec"]["template"]["spec"]
            got = pod["spec"]
            assert got["securityContext"] == want["securityContext"]
            (c_want,), (c_got,) = want["containers"], got["containers"]
            assert c_got["image"] == IMAGE
            for key in ("command", "securityContext", "resources"):
                assert c_got[key] == c_want[key], (name, key)
            assert [m["mountPath"] for m in c_got["volumeMounts"]] == [m["mountPath"] for m in c_want["volumeMounts"]]
            assert [m.get("readOnly", False) for m in c_got["volumeMounts"]] == [
                m.get("readOnly", False) for m in c_want["volumeMounts"]
            ]
            env_want = {e["name"]: e["value"] for e in c_want["env"]}
            env_got = {e["name"]: e["value"] for e in c_got["env"]}
            assert {k: env_got[k] for k in env_want} == env_want
            assert set(env_got) - set(env_want) <= {k for k in env_got if k.startswith("RISKMESH_ADDR_")}
            assert "ports" not in c_got, "container ports are dropped unless published"


def test_secrets_become_decoded_files_with_the_volume_mode_and_the_pods_group(bundles, secrets, pki):
    for org, bundle in bundles.items():
        files = {f.path: f for f in bundle.files}
        for name, pod in pods(bundle).items():
            server = server_of(name, org)
            (pki_volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "pki"]
            assert "secret" not in pki_volume and pki_volume["hostPath"]["type"] == "Directory"
            directory = Path(pki_volume["hostPath"]["path"])
            expected = {
                f"{server}.pem": (pki / org / f"{server}.pem").read_bytes(),
                f"{server}.key": (pki / org / f"{server}.key").read_bytes(),
                "trust.pem": (pki / org / "trust.pem").read_bytes(),
            }
            for filename, data in expected.items():
                f = files[directory / filename]
                assert f.data == data, f"{name}: {filename} is not the decoded Secret value"
                assert (f.mode, f.gid) == (0o440, 10001)
        # No Secret, and no private key, in what podman is given.
        text = yaml.safe_dump_all(bundle.documents)
        assert "PRIVATE KEY" not in text and "secretName" not in text


def test_every_configured_address_is_a_pod_on_the_network_listening_on_that_port(bundles):
    all_pods = {name for bundle in bundles.values() for name in pods(bundle)}
    for org, bundle in bundles.items():
        (configmap,) = [d for d in bundle.documents if d["kind"] == "ConfigMap"]
        for name, pod in pods(bundle).items():
            (container,) = pod["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"]}
            config = parse_config(tomllib.loads(configmap["data"]["riskmesh.toml"]), env, Path("/"))
            for endpoint in [config.self_endpoint, *config.peers.values()]:
                for server in endpoint.addresses:
                    host, port = endpoint.address(server).rsplit(":", 1)
                    assert host == server_pod(endpoint.org, server) and host in all_pods, (org, name, server, host)
                    assert int(port) == BASE_PORT + SERVER_OFFSETS[server]
            assert config.base_port == BASE_PORT
            server = server_of(name, org)
            if server == CONSOLE:  # the console's ports are its Deployment's own (k8s/base/console.yaml)
                assert (env["RISKMESH_CONSOLE_PORT"], env["RISKMESH_CONSOLE_HEALTH_PORT"]) == (
                    str(CONSOLE_HTTP_PORT),
                    str(CONSOLE_HEALTH_PORT),
                )
            else:
                assert config.health_port(server) == BASE_PORT + HEALTH_OFFSET + SERVER_OFFSETS[server]


def test_volumes_configmap_and_claims_are_per_org_and_scratch_volumes_per_pod(bundles):
    scratch_names = []
    for org, bundle in bundles.items():
        claims = {d["metadata"]["name"] for d in bundle.documents if d["kind"] == "PersistentVolumeClaim"}
        (configmap,) = [d["metadata"]["name"] for d in bundle.documents if d["kind"] == "ConfigMap"]
        assert all(c.startswith(f"{org}-") for c in claims) and configmap.startswith(f"{org}-")
        for name, pod in pods(bundle).items():
            volumes = pod["spec"]["volumes"]
            mounted = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
            assert mounted <= {v["name"] for v in volumes}
            for v in volumes:
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] in claims
                if "configMap" in v:
                    assert v["configMap"]["name"] == configmap
                if "emptyDir" in v:
                    assert v["name"].startswith(f"{name}-")
                    scratch_names.append(v["name"])
        assert set(bundle.volumes) >= claims
    assert len(scratch_names) == len(set(scratch_names)), "an emptyDir shared between pods"


def test_published_ports_are_on_loopback_only_and_a_prefix_renames_everything(secrets, tmp_path):
    bundle = translate(
        render("overlays/helper"),
        "helper",
        secrets["helper"],
        IMAGE,
        tmp_path,
        publish={("riskmesh-gateway", "mtls"): 17300},
        prefix="t1-",
    )
    by_name = pods(bundle)
    assert set(by_name) == {
        f"t1-helper-riskmesh-{s}" for s in ("gateway", "intersection", "resharing", "lasso", "console")
    }
    (gateway,) = by_name["t1-helper-riskmesh-gateway"]["spec"]["containers"]
    assert gateway["ports"] == [{"containerPort": 7100, "hostPort": 17300, "hostIP": "127.0.0.1"}]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert env["RISKMESH_ADDR_INSURER_GATEWAY"] == "t1-insurer-riskmesh-gateway:7100"
    assert all(v.startswith("t1-") for v in bundle.volumes)
    with pytest.raises(TranslationError):
        translate(
            render("overlays/helper"),
            "helper",
            secrets["helper"],
            IMAGE,
            tmp_path,
            publish={("riskmesh-nope", "mtls"): 1},
        )


def test_a_missing_secret_is_refused(secrets, tmp_path):
    partial = {k: v for k, v in secrets["insurer"].items() if k != "riskmesh-lasso-tls"}
    with pytest.raises(TranslationError, match="riskmesh-lasso-tls"):
        translate(render("overlays/insurer"), "insurer", partial, IMAGE, tmp_path)


def test_ca_pin_placeholders_are_filled_with_the_fingerprints_given():
    text = 'org = "insurer"\nca_sha256 = "FILL-IN-insurer-ca-sha256"\n'
    text += '[peers.helper]\nca_sha256 = "FILL-IN-helper-ca-sha256"\n'
    filled = fill_pins(text, {"insurer": "AA:BB", "helper": "CC:DD"})
    assert 'ca_sha256 = "AA:BB"' in filled and 'ca_sha256 = "CC:DD"' in filled and "FILL-IN" not in filled
    assert fill_pins(text, {}) == text  # nothing given: left for the servers to refuse
    with pytest.raises(TranslationError, match="helper"):
        fill_pins(text, {"insurer": "AA:BB"})


@pytest.mark.parametrize("org", ["insurer", "hospital"])
def test_the_crypto_workers_pod_is_what_the_servers_dial_under_podman(bundles, org):
    """podman has no headless Service: the balanced address becomes the worker pod's DNS name."""
    bundle = bundles[org]
    assert server_pod(org, "crypto-worker") in bundle.pods
    encryption = next(d for d in bundle.documents if d["metadata"]["name"] == server_pod(org, "encryption"))
    env = {e["name"]: e["value"] for e in encryption["spec"]["containers"][0]["env"]}
    assert env[f"RISKMESH_ADDR_{org.upper()}_CRYPTO_WORKER"] == f"{server_pod(org, 'crypto-worker')}:7105"
    (configmap,) = [d for d in bundle.documents if d["kind"] == "ConfigMap"]
    config = parse_config(tomllib.loads(configmap["data"]["riskmesh.toml"]), env, Path("/"))
    assert config.crypto_worker_targets() == [f"{server_pod(org, 'crypto-worker')}:7105"]
