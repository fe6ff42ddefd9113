"""Open a GatewayClient for an org from its config file (the CLI's way in)."""

from __future__ import annotations

from pathlib import Path

from riskmesh.client import GatewayClient
from services.mesh.config import load_config


def gateway_client(config_path: Path) -> GatewayClient:
    config = load_config(Path(config_path), env={})
    endpoint = config.self_endpoint
    return GatewayClient.from_pki(endpoint.address("gateway"), config.org, config.pki_dir)
