"""`edgekit-agent` as a user runs it: exit codes, one-line errors, and the serve daemon."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from edgekit_agent.cli import main
from edgekit_agent.runtime import Runner, load_backend


def test_install_status_infer_rollback(tmp_path, bundle_factory, keypair, models, images, agent_cli):
    priv, pub = keypair
    store = tmp_path / "store"
    v1, v2 = bundle_factory(version="1", sign_key=priv), bundle_factory(version="2", sign_key=priv)
    p = agent_cli("install", v1, "--store", store, "--key", pub)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("installed digits 1") and "8 self-test vector(s)" in p.stdout
    assert "signature checked" in p.stdout
    p = agent_cli("install", v2, "--store", store, "--key", pub, "--json")
    result = json.loads(p.stdout)
    assert p.returncode == 0 and result["slot"] == "b" and result["selftest"]["vectors"] == 8

    status = json.loads(agent_cli("status", "--store", store, "--json").stdout)
    assert status["active"]["version"] == "2" and status["previous"]["version"] == "1"
    text = agent_cli("status", "--store", store).stdout
    assert "active    slot b: digits 2" in text and "failures  0 of 3 within 600 s" in text

    np.save(tmp_path / "x.npy", images[5])
    p = agent_cli("infer", "--store", store, "--input", tmp_path / "x.npy", "--json")
    assert p.returncode == 0, p.stderr
    want = Runner(load_backend(models["tflite"], "tflite"))([images[5:6]])[0]
    assert np.array_equal(np.asarray(json.loads(p.stdout)["outputs"]["logits"], np.float32), want)
    p = agent_cli("infer", "--store", store, "--input", f"image={tmp_path / 'x.npy'}")
    assert p.returncode == 0 and f"argmax={int(np.argmax(want))}" in p.stdout

    p = agent_cli("rollback", "--store", store)
    assert p.returncode == 0 and "is active" in p.stdout
    assert json.loads(agent_cli("status", "--store", store, "--json").stdout)["active"]["version"] == "1"


def test_refusals_are_one_line_errors(tmp_path, bundle_factory, keypair, cli_error, agent_cli, images):
    priv, pub = keypair
    store = tmp_path / "store"
    cli_error(agent_cli("rollback", "--store", store), "no bundle store here")
    cli_error(agent_cli("install", bundle_factory(version="1"), "--store", store, "--key", pub),
              "signature check failed", "not signed")
    cli_error(agent_cli("install", tmp_path / "nope.ekb", "--store", store), "no such bundle file")
    cli_error(agent_cli("install", bundle_factory(version="1", selftest="bad"), "--store", store),
              "self-test failed")
    cli_error(agent_cli("infer", "--store", store, "--input", tmp_path / "x.npy"), "cannot read")
    assert agent_cli("install", bundle_factory(version="1"), "--store", store).returncode == 0
    cli_error(agent_cli("rollback", "--store", store), "no previous bundle to roll back to")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 3), np.float32))
    cli_error(agent_cli("infer", "--store", store, "--input", tmp_path / "wrong.npy"),
              "input 'image': shape [3, 3] does not match [1, 8, 8, 1]")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    cli_error(agent_cli("infer", "--store", store, "--input", tmp_path / "junk.npy"),
              "not a numpy array file")
    bad_cfg = tmp_path / "a.toml"
    bad_cfg.write_text('device_id = "d"\n[store]\nroot = "s"\n[sensors]\nkind = "magic"\n')
    for cmd in ("serve", "run"):
        cli_error(agent_cli(cmd, "--config", bad_cfg), "sensors.kind: 'magic' is not", "allowed: pi, simulated, sysfs")


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["install"])
    assert exc.value.code == 2
    assert "--store" in capsys.readouterr().err


def test_status_and_rollback_of_missing_store_create_nothing(tmp_path, capsys):
    assert main(["status", "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "active    none" in out and "previous  none" in out
    assert main(["rollback", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 's'}: no bundle store here (nothing was ever installed)"
    assert not (tmp_path / "s").exists()


def test_serve_answers_http_and_stops_cleanly_on_sigterm(tmp_path, bundle_factory, images):
    store = tmp_path / "store"
    assert main(["install", str(bundle_factory(version="1")), "--store", str(store)]) == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "d1"\n[store]\nroot = "{store}"\n[http]\nport = 0\n')
    proc = subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "serve", "--config", str(cfg)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready, "serve printed nothing"
        line = proc.stderr.readline()
        url = line.rsplit(" on ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        body = json.dumps({"inputs": {"image": images[0].tolist()}}).encode()
        req = urllib.request.Request(f"{url}/v1/infer", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200 and len(json.load(resp)["outputs"]["logits"][0]) == 10
        health = json.loads((store / "health.json").read_text())
        assert health["running"]["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # a clean stop: the next start will not count this run as a crash
    assert json.loads((store / "health.json").read_text())["running"] is None
