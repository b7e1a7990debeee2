"""`edgekit-agent init` writes a config that `install` and `run` take as it is."""

from __future__ import annotations

import json

from edgekit_agent.init_config import detect_sensors


def test_init_install_run_reaches_the_broker(tmp_path, broker, collect, start_agent, keypair,
                                             bundle_factory, agent_cli):
    config, store = tmp_path / "etc" / "agent.toml", tmp_path / "store"
    p = agent_cli("init", "--device", "pi-new-01", "--fleet", "lab", "--store", store,
                  "--broker", f"{broker.host}:{broker.port}", "--key", keypair[1],
                  "--sensors", "simulated", "-o", config)
    assert p.returncode == 0, p.stderr
    assert store.is_dir() and f"install BUNDLE --config {config}" in p.stdout
    p = agent_cli("install", bundle_factory(sign_key=keypair[0]), "--config", config, "--json")
    assert p.returncode == 0, p.stderr
    installed = json.loads(p.stdout)["bundle_id"]
    sub = collect(broker, "edgekit/v1/lab/pi-new-01/status")
    agent = start_agent(config)
    online = sub.wait_for(lambda m: m.payload and m.payload.get("state") == "online", 30, "online")
    assert online.payload["bundle"]["id"] == installed, agent.output()
    assert agent.alive()


def test_init_refuses_to_overwrite_bad_names_and_missing_keys(tmp_path, agent_cli):
    config = tmp_path / "agent.toml"
    ok = agent_cli("init", "--device", "dev1", "--store", tmp_path / "s", "-o", config)
    assert ok.returncode == 0, ok.stderr
    before = config.read_bytes()
    for args, fragment in (
            (("--device", "dev1"), "already exists (--force replaces it)"),
            (("--device", "bad/name", "--force"), "device_id"),
            (("--device", "dev1", "--force", "--key", tmp_path / "none.pub"), "not found"),
            (("--device", "dev1", "--force", "--broker", "host:99999"), "HOST:PORT")):
        p = agent_cli("init", *args, "--store", tmp_path / "s", "-o", config)
        assert p.returncode == 1 and fragment in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
        assert config.read_bytes() == before  # a refused init changes nothing


def test_sensor_kind_is_detected_from_the_tree(tmp_path):
    assert detect_sensors(tmp_path) == "simulated"
    (tmp_path / "sys/class/thermal/thermal_zone0").mkdir(parents=True)
    assert detect_sensors(tmp_path) == "sysfs"
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/vcgencmd").write_text("")
    assert detect_sensors(tmp_path) == "pi"
