from pathlib import Path

import pytest

from services.mesh.config import ConfigError, load_config, parse_config, render_config

BASE = {"org": "insurer", "role": "data_owner", "base_port": 7100, "pki_dir": "pki", "peers": {"hospital": {"role": "data_owner", "base_port": 7200}, "helper": {"role": "helper", "base_port": 7300}}}


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


@pytest.mark.parametrize("broken, message", [
    ({"role": "boss"}, "role must be one of"),
    ({"org": None}, "missing required key 'org'"),
    ({"peers": {"x": {"base_port": 1}}}, "peers.x: missing required key 'role'"),
    ({"peers": {"a": {"role": "helper"}, "b": {"role": "helper"}}}, "at most one helper"),
    ({"reflection": "yes"}, "reflection must be true or false"),
    ({"min_paillier_bits": 512}, "min_paillier_bits must be at least 1024"),
    ({"max_upload_rows": 0}, "max_upload_rows must be positive"),
])
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
    pinned = {**BASE, "ca_sha256": "AA:" * 31 + "AA", "reflection": True, "min_paillier_bits": 1024, "max_upload_rows": 1000,
              "peers": {"hospital": {"role": "data_owner", "base_port": 7200, "ca_sha256": "bb" * 32}}}
    config = parse_config(pinned, {}, tmp_path)
    path.write_text(render_config(config))
    assert load_config(path, env={}) == config
    assert config.ca_pins == {"insurer": "AA:" * 31 + "AA", "hospital": "bb" * 32}


def test_secure_defaults(tmp_path):
    config = parse_config(BASE, {}, tmp_path)
    assert (config.reflection, config.min_paillier_bits, config.max_upload_rows, config.ca_pins) == (False, 2048, 500_000, {})


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    (tmp_path / "bad.toml").write_text("org = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml", env={})
    with pytest.raises(ConfigError, match="RISKMESH_CONFIG"):
        load_config(None, env={})
