"""Shared set-up of the console browser tests: the three organisations' servers and
consoles as processes, a study's synthetic data, and headless Chromium (Debian's
`chromium` package, driven by Playwright; no browser download)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format

from riskmesh.client import GatewayClient
from services.mesh.config import load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import StudyData, make_study_data
from services.tools.consoles import ConsoleInfo, start_consoles
from services.tools.launcher import LocalMesh, local_mesh_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 860}  # a laptop screen
ALPHA = 0.05
RECORDS = 200


@dataclass
class ConsoleMesh:
    root: Path
    configs: dict[str, Path]
    consoles: dict[str, ConsoleInfo]
    clients: dict[str, GatewayClient]
    data: StudyData
    sources: dict[str, str]

    def spec_file(self, study_id: str, alphas: list[float], **kwargs) -> Path:
        path = self.root / f"{study_id}-{len(list(self.root.glob('*.json')))}.json"
        path.write_text(json_format.MessageToJson(spec_for(self.data, study_id, alphas=alphas, **kwargs)))
        return path


# Module scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while the browser lives (later tests' asyncio.run would fail), and the mesh is 15 processes.
@pytest.fixture(scope="module")
def console_mesh(tmp_path_factory) -> Iterator[ConsoleMesh]:
    root = tmp_path_factory.mktemp("console")
    configs = local_mesh_for(root)
    orgs = {org: load_config(p, env={}) for org, p in configs.items()}
    data = make_study_data(RECORDS, overlap=0.5)
    sources = {
        "insurer": str(data.insurer.write_csv(orgs["insurer"].state_dir / "data" / "insurer.csv")),
        "hospital": str(data.hospital.write_csv(orgs["hospital"].state_dir / "data" / "hospital.csv")),
    }
    mesh = LocalMesh(configs).start()
    try:
        processes, infos = start_consoles(configs)
    except BaseException:
        mesh.stop()
        raise
    mesh.processes.extend(processes)
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in orgs.items()
    }
    yield ConsoleMesh(root, configs, {i.org: i for i in infos}, clients, data, sources)
    for client in clients.values():
        client.close()
    mesh.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    for log in root.glob("*/state/logs/console.log"):
        shutil.copy(log, ARTIFACTS / f"console-{log.parts[-4]}.log")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def signed_in(browser, console: ConsoleInfo):
    """A fresh browser context (own cookies) signed in to one org's console."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(console.login_url)
    assert page.url.endswith("/studies"), page.url
    return context, page


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
