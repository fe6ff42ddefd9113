from pathlib import Path

import pytest

from services.mesh.config import ConfigError, load_config, parse_config, render_config

BASE = {
    "org": "insurer",
    "role": "data_owner",
    "base_port": 7100,
    "pki_dir": "pki",
    "peers": {"hospital": {"role": "data_owner", "base_port": 7200}, "helper": {"role": "helper", "base_port": 7300}},
}


def test_addresses_follow_base_ports_and_env_overrides(tmp_path):
    config = parse_config(BASE, {"RISKMESH_ADDR_HOSPITAL_LASSO": "lasso.hospital.example:443"}, tmp_path)
    assert config.endpoint("helper").address("intersection") == "127.0.0.1:7302"
    assert config.endpoint("hospital").address("lasso") == "lasso.hospital.example:443"
    assert config.port("resharing") == 7103 and config.health_port("resharing") == 7113
    assert config.helper_org == "helper" and config.owner_orgs == ["insurer", "hospital"]
    assert config.pki_dir == tmp_path / "pki"


def test_env_overrides_paths(tmp_path):
    config = parse_config(BASE, {"RISKMESH_PKI_DIR": "/etc/pki", "RISKMESH_BIND_HOST": "0.0.0.0"}, tmp_path)
    assert config.pki_dir == Path("/etc/pki") and config.bind_host == "0.0.0.0"


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"role": "boss"}, "role must be one of"),
        ({"org": None}, "missing required key 'org'"),
        ({"peers": {"x": {"base_port": 1}}}, "peers.x: missing required key 'role'"),
        ({"peers": {"a": {"role": "helper"}, "b": {"role": "helper"}}}, "at most one helper"),
        ({"reflection": "yes"}, "reflection must be true or false"),
        ({"min_paillier_bits": 512}, "min_paillier_bits must be at least 1024"),
        ({"max_upload_rows": 0}, "max_upload_rows must be positive"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(tmp_path, broken, message):
    data = {**BASE, **broken}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, {}, tmp_path)


def test_unknown_peer_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not a configured peer"):
        parse_config(BASE, {}, tmp_path).endpoint("bank")


def test_render_and_load_round_trip(tmp_path):
    config = parse_config(BASE, {}, tmp_path)
    path = tmp_path / "riskmesh.toml"
    path.write_text(render_config(config))
    assert load_config(path, env={}) == config
    # The security settings: pins, reflection, key size floor and the helper's row cap.
    pinned = {
        **BASE,
        "ca_sha256": "AA:" * 31 + "AA",
        "reflection": True,
        "min_paillier_bits": 1024,
        "max_upload_rows": 1000,
        "peers": {"hospital": {"role": "data_owner", "base_port": 7200, "ca_sha256": "bb" * 32}},
    }
    config = parse_config(pinned, {}, tmp_path)
    path.write_text(render_config(config))
    assert load_config(path, env={}) == config
    assert config.ca_pins == {"insurer": "AA:" * 31 + "AA", "hospital": "bb" * 32}


def test_secure_defaults(tmp_path):
    config = parse_config(BASE, {}, tmp_path)
    assert (config.reflection, config.min_paillier_bits, config.max_upload_rows, config.ca_pins) == (
        False,
        2048,
        500_000,
        {},
    )


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    (tmp_path / "bad.toml").write_text("org = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", env={})
    with pytest.raises(ConfigError, match="RISKMESH_CONFIG"):
        load_config(None, env={})


OWN_PORTS = {
    "gateway": {"mtls": 41001, "health": 41002},
    "encryption": {"mtls": 41003, "health": 41004},
    "resharing": {"mtls": 41005, "health": 41006},
    "lasso": {"mtls": 41007, "health": 41008},
}


def test_per_server_ports_replace_base_port_and_round_trip(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "base_port"} | {"ports": OWN_PORTS}
    config = parse_config(data, {}, tmp_path)
    assert config.port("resharing") == 41005 and config.health_port("resharing") == 41006
    assert config.self_endpoint.address("lasso") == "127.0.0.1:41007"
    assert config.ports_cover_servers
    text = render_config(config)
    assert "base_port" not in text.split("[peers")[0]
    path = tmp_path / "riskmesh.toml"
    path.write_text(text)
    assert load_config(path, env={}) == config


def test_ports_of_some_servers_only_keep_base_port_for_the_others(tmp_path):
    config = parse_config({**BASE, "ports": {"lasso": {"mtls": 41007, "health": 41008}}}, {}, tmp_path)
    assert config.port("lasso") == 41007 and config.port("gateway") == 7100 and not config.ports_cover_servers
    assert config.self_endpoint.address("gateway") == "127.0.0.1:7100"


@pytest.mark.parametrize(
    "ports, message",
    [
        ({"lasso": {"mtls": 41007, "health": 41008}}, "missing required key 'base_port'"),
        (OWN_PORTS | {"bank": {"mtls": 1, "health": 2}}, "ports: unknown server 'bank'"),
        (OWN_PORTS | {"lasso": {"mtls": 41007}}, "ports.lasso: missing required key 'health'"),
        (OWN_PORTS | {"lasso": {"mtls": 0, "health": 41008}}, "ports.lasso: a port must be an integer from 1 to 65535"),
        (OWN_PORTS | {"lasso": 41007}, "ports.lasso: expected a table"),
    ],
)
def test_bad_ports_are_refused_with_a_clear_message(tmp_path, ports, message):
    data = {k: v for k, v in BASE.items() if k != "base_port"} | {"ports": ports}
    with pytest.raises(ConfigError, match=message):
        parse_config(data, {}, tmp_path)


def test_policy_comes_from_the_table_or_a_policy_file_and_survives_rendering(tmp_path):
    table = {"min_intersection": 500, "reveals": ["joined_count"], "min_relative_penalty": 1e-4}
    config = parse_config({**BASE, "policy": table}, {}, tmp_path)
    assert dict(config.policy) == table
    (tmp_path / "policy.toml").write_text(
        'min_intersection = 500\nreveals = ["joined_count"]\nmin_relative_penalty = 1e-4\n'
    )
    assert dict(parse_config({**BASE, "policy_file": "policy.toml"}, {}, tmp_path).policy) == table
    path = tmp_path / "org.toml"
    path.write_text(render_config(config))
    assert dict(load_config(path, env={}).policy) == table
    assert parse_config(BASE, {}, tmp_path).policy == {}


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"policy": {"a": 1}, "policy_file": "p.toml"}, "either a \\[policy\\] table or policy_file"),
        ({"policy_file": "missing.toml"}, "policy file not found"),
        ({"policy": 3}, "policy must be a table"),
    ],
)
def test_bad_policy_config_is_refused(tmp_path, broken, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, **broken}, {}, tmp_path)


def test_crypto_workers_round_trip_with_their_reserved_ports(tmp_path):
    data = {
        **BASE,
        "role": "data_owner",
        "crypto_workers": 3,
        "ports": {f"crypto-worker-{i}": {"mtls": 41000 + 2 * i, "health": 41001 + 2 * i} for i in range(3)},
    }
    config = parse_config(data, {}, tmp_path)
    path = tmp_path / "riskmesh.toml"
    path.write_text(render_config(config))
    assert load_config(path, env={}) == config
    assert config.crypto_worker_targets() == ["127.0.0.1:41000", "127.0.0.1:41002", "127.0.0.1:41004"]
    assert config.worker_ports(2).health == 41005
    # Worker ports are not server addresses: the org's endpoint lists servers only.
    assert not any(name.startswith("crypto-worker-") for name in config.self_endpoint.addresses)
    with pytest.raises(ConfigError, match="unknown server"):
        parse_config({**BASE, "ports": {"crypto-worker-x": {"mtls": 1, "health": 2}}}, {}, tmp_path)
    with pytest.raises(ConfigError, match="give it ports"):
        parse_config({**BASE, "role": "data_owner", "crypto_workers": 6}, {}, tmp_path).crypto_worker_targets()
