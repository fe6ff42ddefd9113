"""The image, run as the overlays run it: the three organisations' rendered overlays under
`podman kube play` (after services/tools/kubeplay.py's translation), every server and
console hardened and healthy, each console reaching its gateway, and a whole study
across the three orgs' containers.

What this proves and what it cannot: k8s/README.md ("Containers")."""

from __future__ import annotations

import time

import numpy as np

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.mesh.config import HEALTH_OFFSET, SERVER_OFFSETS
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data, reference_join
from services.tools import containers
from services.tools.kubeplay import server_of
from tests.k8s.manifests import BASE_PORT, CONSOLE, CONSOLE_HEALTH_PORT, CONSOLE_HTTP_PORT

DEV_ONLY_MODULES = (
    "sklearn",
    "scipy",
    "matplotlib",
    "pytest",
    "hypothesis",
    "grpc_tools",
    "kubernetes_validate",
    "psutil",
    "pip",
    "yaml",
)
ALPHA = 0.05


def proc_status(container: str) -> dict[str, str]:
    text = containers.podman("exec", container, "cat", "/proc/1/status").stdout.decode()
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def test_image_holds_the_runtime_set_only_and_no_build_secret(image):
    size = containers.image_size_mb(image)
    assert size <= 400, f"image is {size:.0f} MB"
    probe = "import importlib.util, sys; print(','.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    done = containers.podman(
        "run", "--rm", "--read-only", "--cap-drop=ALL", image, "python", "-c", probe, *DEV_ONLY_MODULES
    )
    assert done.stdout.decode().strip() == "", f"dev-only modules in the image: {done.stdout.decode()}"
    # The build's CA bundle was a secret mount: nothing of it in any layer or the environment.
    done = containers.podman(
        "run", "--rm", image, "sh", "-c", "ls /run/secrets 2>/dev/null; env | grep -i -E 'PIP_CERT|CA_BUNDLE' || true"
    )
    assert done.stdout.decode().strip() == ""
    assert "Usage: riskmesh" in containers.podman("run", "--rm", "--read-only", image).stdout.decode()


def test_every_server_runs_hardened_from_its_overlay_and_answers_health(played):
    for org, bundle in played.bundles.items():
        for pod in bundle.pods:
            server = server_of(pod, org, played.prefix)
            container = played.container(pod)
            info = containers.inspect(container)
            assert info["State"]["Running"], containers.logs(container)
            assert info["Config"]["User"] == "10001:10001"
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
            assert not info["EffectiveCaps"]
            status = proc_status(container)  # the server process itself (pid 1)
            assert status["Uid"].split()[:2] == ["10001", "10001"] and status["Gid"].split()[0] == "10001"
            assert status["CapEff"] == "0000000000000000" and status["CapPrm"] == "0000000000000000"
            assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
            touched = containers.podman("exec", container, "touch", "/opt/riskmesh/x", check=False)
            assert touched.returncode != 0 and b"Read-only file system" in touched.stderr
            if server == CONSOLE:  # HTTP, /healthz on its probe port
                healthz = f"http://127.0.0.1:{CONSOLE_HEALTH_PORT}/healthz"
                assert containers.http_get_inside(container, healthz) == (200, "ok"), containers.logs(container)
            else:
                port = BASE_PORT + HEALTH_OFFSET + SERVER_OFFSETS[server]
                assert containers.health_inside(container, port) == "SERVING", containers.logs(container)
        assert {server_of(pod, org, played.prefix) for pod in bundle.pods} >= {"gateway", "resharing", "lasso", CONSOLE}


def test_each_console_shows_its_gateways_studies_to_a_user_the_proxy_names(played):
    """The console (proxy auth, as behind the org's SSO ingress) reaches its own gateway
    over mTLS as spiffe://<org>/console, by the gateway pod's name; its probe port answers
    /healthz and nothing else, and no page is served without the proxy's user header."""
    for org, bundle in played.bundles.items():
        (console,) = [pod for pod in bundle.pods if server_of(pod, org, played.prefix) == CONSOLE]
        container = played.container(console)
        page = f"http://127.0.0.1:{CONSOLE_HTTP_PORT}/studies"
        probe_port_page = f"http://127.0.0.1:{CONSOLE_HEALTH_PORT}/studies"
        assert containers.http_get_inside(container, probe_port_page)[0] == 404
        assert containers.http_get_inside(container, page)[0] == 401
        status, body = containers.http_get_inside(container, page, {"X-Auth-Request-User": f"operator@{org}"})
        assert status == 200 and f"Known to {org}" in body, body[-2000:] + containers.logs(container)


def test_whole_study_across_the_three_orgs_containers_matches_scikit_learn(played):
    data = make_study_data(300, overlap=0.5)
    for org, table in (("insurer", data.insurer), ("hospital", data.hospital)):
        csv = table.write_csv(played.pki.parent / f"{org}.csv")
        containers.import_files(f"{played.prefix}{org}-riskmesh-data", {f"{org}.csv": csv.read_bytes()})
    clients = {
        org: GatewayClient.from_pki(f"127.0.0.1:{port}", org, played.pki) for org, port in played.gateway_ports.items()
    }
    try:
        peers = clients["insurer"].check_peers()
        assert {p.org: p.reachable for p in peers.peers} == {"hospital": True, "helper": True}
        study = clients["insurer"].propose(spec_for(data, "containers", alphas=[ALPHA]), "/data/insurer.csv")
        clients["hospital"].approve("containers", study.spec_digest, "/data/hospital.csv")
        clients["helper"].approve("containers", study.spec_digest)
        started = time.monotonic()
        run = clients["insurer"].start_run("containers")
        final = None
        for event in clients["insurer"].watch(run.run_id, timeout=300):
            final = event.run
        assert final.state == common_pb2.RUN_STATE_SUCCEEDED, final
        names, x, y = reference_join(data)
        assert final.joined == len(y)
        reference = lasso_reference(names, x, y, ALPHA)
        _, insurer_result = clients["insurer"].result(final.run_id)
        # each gateway ends the run on its own: the hospital's may end just after the insurer's
        assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
        _, hospital_result = clients["hospital"].result(final.run_id)
        secure = np.array([c.value for c in insurer_result.coefficients])
        plain = np.array([reference[c.feature] for c in insurer_result.coefficients])
        assert [c.feature for c in insurer_result.coefficients] == names
        assert np.max(np.abs(secure - plain)) <= 1e-5 * np.max(np.abs(plain))
        assert list(hospital_result.coefficients) == list(insurer_result.coefficients)
        print(f"study across containers: {time.monotonic() - started:.1f} s")
    finally:
        for client in clients.values():
            client.close()


def test_doctor_inside_each_gateway_pod_passes(played):
    """`riskmesh doctor` as an operator runs it in a pod (`kubectl exec deploy/riskmesh-gateway
    -- riskmesh doctor --org <org> --server gateway`): config, the mounted certificate, the
    peer gateways over mTLS by their pod names, clocks, the port and the state volume."""
    for org, bundle in played.bundles.items():
        (gateway,) = [pod for pod in bundle.pods if pod.endswith("-riskmesh-gateway")]
        done = containers.podman(
            "exec", played.container(gateway), "riskmesh", "doctor", "--org", org, "--server", "gateway", check=False
        )
        out = done.stdout.decode()
        assert done.returncode == 0, out + done.stderr.decode()
        assert " 0 failed" in out and out.count("mTLS ok") == 2, out
