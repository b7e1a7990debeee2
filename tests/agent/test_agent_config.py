"""agent.toml loading: the shipped sample, defaults, relative paths, and errors that name things."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit_agent.config import AgentConfig, LoadConfig, QueueConfig, StoreConfig
from edgekit_agent.defaults import SENSOR_KINDS
from edgekit_agent.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[2] / "agent" / "agent.toml"


def test_sample_config_loads_with_every_section():
    cfg = AgentConfig.from_file(SAMPLE)
    assert (cfg.device_id, cfg.fleet) == ("pi-kitchen-01", "lab")
    assert cfg.store.root == Path("/var/lib/edgekit/store") and cfg.store.max_failures == 3
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls, cfg.mqtt.username) == (
        "broker.lab.example", 8883, True, "pi-kitchen-01")
    assert cfg.http.host == "127.0.0.1" and cfg.runtime.threads == 2 and cfg.runtime.variant is None
    assert cfg.sensors.kind == "pi" and cfg.telemetry.interval_s == 10.0
    assert cfg.queue.max_messages == 100_000 and cfg.policy.file == Path("/etc/edgekit/policy.toml")
    assert AgentConfig.from_dict(cfg.to_dict(), source="again") == cfg.__class__(
        **{**cfg.__dict__, "source": "again"})


def test_minimal_config_defaults_and_relative_paths(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    f = tmp_path / "agent.toml"
    f.write_text('device_id = "d1"\n[store]\nroot = "store"\n'
                 '[mqtt]\nusername = "u"\npassword_file = "pw"\n'
                 '[sensors]\nkind = "simulated"\nambient_c = 25.0\n')
    cfg = AgentConfig.from_file(f)
    assert cfg.fleet == "default" and cfg.store.root == tmp_path / "store"
    assert cfg.queue.path == tmp_path / "store" / "telemetry-queue.sqlite"
    assert cfg.http.port == 8470 and cfg.mqtt.port == 1883 and cfg.mqtt.tls is False
    assert cfg.mqtt.read_password() == "s3cret"
    assert cfg.sensors.options == {"ambient_c": 25.0} and cfg.policy.file is None


@pytest.mark.parametrize("text, fragments", [
    ('device_id = "d"\n[store]\nroot = "s"\nrooot = 1\n',
     ["store.rooot: 1 is not a known key", "(allowed: failure_window_s, max_failures, public_key, root)"]),
    ('device_id = "d"\n[store]\nroot = "s"\n[sensors]\nkind = "thermocouple"\n',
     ["sensors.kind: 'thermocouple' is not", "allowed: " + ", ".join(sorted(SENSOR_KINDS))]),
    ('device_id = "d"\n[store]\nroot = "s"\n[http]\nport = 70000\n',
     ["http.port: 70000 is not an integer in 0..65535"]),
    ('device_id = "d"\n[store]\nroot = "s"\n[mqtt]\ntls = "yes"\n', ["mqtt.tls: 'yes' is not true or false"]),
    ('device_id = "d"\n[store]\nroot = "s"\n[runtime]\nthreads = 0\n',
     ["runtime.threads: 0 is not an integer in 1..256"]),
    ('device_id = "a/b"\n[store]\nroot = "s"\n', ["device_id: 'a/b' is not", "MQTT topic level"]),
    ('[store]\nroot = "s"\n', ["device_id: missing is not"]),
    ('device_id = "d"\n', ["store.root: missing is not"]),
    ('device_id = "d"\nstore = 3\n', ["store: 3 is not a table"]),
    ('device_id = "d"\n[store]\nroot = "s"\n[mqtt]\npassword_file = "p"\n',
     ["mqtt.username: missing is not optional when a password_file is set"]),
    ('device_id = "d"\n[store]\nroot = "s"\n[telemetry]\ninterval_s = 0\n', ["telemetry.interval_s"]),
    ('device_id = "d"\nsecret = 1\n', ["secret: 1 is not a known key", "allowed:"]),
    ('device_id = \n', ["not valid TOML"]),
])
def test_errors_name_file_key_value_and_allowed(tmp_path, text, fragments):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_file(f)
    msg = str(err.value)
    assert msg.startswith(str(f)) and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_missing_file_and_unreadable_password(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        AgentConfig.from_file(tmp_path / "nope.toml")
    f = tmp_path / "a.toml"
    f.write_text('device_id = "d"\n[store]\nroot = "s"\n[mqtt]\nusername = "u"\npassword_file = "gone"\n')
    with pytest.raises(ConfigError, match=r"mqtt.password_file: '.* is not a readable password file .*gone"):
        AgentConfig.from_file(f).mqtt.read_password()


def test_constructed_in_code_with_defaults(tmp_path):
    cfg = AgentConfig(device_id="d", store=StoreConfig(root=tmp_path), queue=QueueConfig(path=tmp_path / "q"))
    assert cfg.load == LoadConfig() and cfg.http.host == "127.0.0.1" and cfg.sensors.kind == "sysfs"
