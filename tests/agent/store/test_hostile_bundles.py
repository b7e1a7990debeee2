"""Issue 10 on the device: hostile bundles get a one-line refusal and change nothing.

Finding 2 (ONNX external data read from the agent's cwd), 3 (downgrade), 5 (a refused install
destroyed the rollback target; NaN/duplicate keys), 10 (MCU arena_bytes, mutated .tflite,
TFLM crashes) and 11 (typed state/health files, control characters, the agent.toml key).
Every test runs the real `edgekit-agent` CLI in a subprocess, as an operator would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    agent,
    bundle,
    leaky_onnx,
    manifest_dict,
    manifest_for,
    one_line_error,
    snapshot,
    write_raw,
)

PASSWD = Path("/etc/passwd")


# --- finding 2: a bundle must not make the device read host files ------------------------------

def test_onnx_naming_etc_passwd_is_refused_at_install(tmp_path, keypair):
    b = bundle(tmp_path / "leak.ekb", leaky_onnx("etc/passwd"), "onnx", keypair[0])
    store = tmp_path / "store"
    proc = agent("install", b, "--store", store, "--key", keypair[1], cwd="/")
    one_line_error(proc, "model 'model.onnx'", "references external data")
    assert not (store / "state.json").exists()


def test_onnx_naming_etc_passwd_is_refused_at_load(tmp_path, keypair, bundle_factory):
    """A bundle already in a slot (put there by an older agent) is refused when loaded."""
    store = tmp_path / "store"
    assert agent("install", bundle_factory("onnx", sign_key=keypair[0]), "--store", store,
                 "--key", keypair[1]).returncode == 0
    leak = bundle(tmp_path / "leak.ekb", leaky_onnx("etc/passwd"), "onnx", keypair[0])
    (store / "slots" / "a" / "bundle.ekb").write_bytes(leak.read_bytes())
    np.save(tmp_path / "x.npy", np.zeros((1, 16), np.float32))
    proc = agent("infer", "--store", store, "--key", keypair[1], "--input", tmp_path / "x.npy",
                 "--json", cwd="/")
    assert PASSWD.read_bytes()[:8].decode() not in proc.stdout
    one_line_error(proc, "references external data")


# --- finding 3: anti-rollback -------------------------------------------------------------------

def _counted(tmp_path: Path, models, keypair, counter: int | None, name: str = "digits") -> Path:
    return bundle(tmp_path / f"{name}-{counter}.ekb", models["tflite"], "tflite", keypair[0],
                  security_version=counter, name=name, version=str(counter))


def test_an_older_security_version_is_refused_unless_the_operator_allows_it(tmp_path, models,
                                                                            keypair):
    store = tmp_path / "store"
    for counter in (10, 20):
        assert agent("install", _counted(tmp_path, models, keypair, counter), "--store", store,
                     "--key", keypair[1]).returncode == 0
    before = snapshot(store)
    old = _counted(tmp_path, models, keypair, 15)
    one_line_error(agent("install", old, "--store", store, "--key", keypair[1]),
                   "security_version 15 is below 20", "--allow-downgrade")
    assert snapshot(store) == before
    proc = agent("install", old, "--store", store, "--key", keypair[1], "--allow-downgrade")
    assert proc.returncode == 0, proc.stderr
    state = json.loads((store / "state.json").read_text())
    assert state["security_version"] == 20  # the floor stays the highest ever installed
    assert state["last"]["downgrade"] == {"from_security_version": 20, "to_security_version": 15,
                                          "allowed_by": "allow_downgrade"}
    # rollback to the kept slot (20) and back still works, without any override
    assert agent("rollback", "--store", store).returncode == 0
    status = json.loads(agent("status", "--store", store, "--json").stdout)
    assert status["active"]["version"] == "20" and status["previous"]["version"] == "15"


def test_bundles_without_a_counter_count_as_zero(tmp_path, models, keypair):
    store = tmp_path / "store"
    legacy = _counted(tmp_path, models, keypair, None, name="legacy")
    assert agent("install", legacy, "--store", store, "--key", keypair[1]).returncode == 0
    assert agent("install", _counted(tmp_path, models, keypair, 5), "--store", store,
                 "--key", keypair[1]).returncode == 0
    one_line_error(agent("install", legacy, "--store", store, "--key", keypair[1]),
                   "security_version 0 is below 5")


# --- finding 5: validate everything before touching a slot ---------------------------------------

def _nan_in_source(text: bytes) -> bytes:
    return text.replace(b'"source": {}', b'"source": {"latency_ms": NaN}')


def _infinity_in_fidelity(text: bytes) -> bytes:
    return text.replace(b'"fidelity": {}', b'"fidelity": {"top1_agreement": Infinity}')


def _duplicate_name(text: bytes) -> bytes:
    return text.replace(b'"name": "digits"', b'"name": "digits", "name": "evil"', 1)


@pytest.mark.parametrize("edit, message", [
    (_nan_in_source, "NaN is not allowed"), (_infinity_in_fidelity, "Infinity is not allowed"),
    (_duplicate_name, "duplicate key 'name'")])
def test_a_refused_manifest_keeps_the_rollback_target(edit, message, tmp_path, models, keypair):
    store = tmp_path / "store"
    for counter in (1, 2):
        assert agent("install", _counted(tmp_path, models, keypair, counter), "--store", store,
                     "--key", keypair[1]).returncode == 0
    before = snapshot(store)
    files = [("model.tflite", models["tflite"], "model")]
    m = manifest_dict(manifest_for(models["tflite"], "tflite"), files, security_version=3)
    bad = write_raw(tmp_path / "bad.ekb", m, files, keypair[0], edit=edit)
    one_line_error(agent("install", bad, "--store", store, "--key", keypair[1]), message)
    assert snapshot(store) == before
    status = json.loads(agent("status", "--store", store, "--json").stdout)
    assert (status["active"]["version"], status["previous"]["version"]) == ("2", "1")


# --- finding 11: typed state files, escaped output, the agent.toml key ---------------------------

@pytest.mark.parametrize("state, message", [
    ({"active": 5}, "active: 5 is not one of the allowed values"),
    ({"active": "a", "security_version": "high"}, "security_version: 'high' is not an integer"),
    ([1, 2], "is not a JSON object")])
def test_wrongly_typed_state_json_is_one_line(state, message, tmp_path, models, keypair):
    store = tmp_path / "store"
    assert agent("install", _counted(tmp_path, models, keypair, 1), "--store", store).returncode == 0
    (store / "state.json").write_text(json.dumps(state))
    before = snapshot(store)
    for args in (("status",), ("rollback",), ("install", _counted(tmp_path, models, keypair, 2))):
        one_line_error(agent(*args[:1], *args[1:], "--store", store), message)
    assert snapshot(store) == before


def test_wrongly_typed_health_json_leaves_the_store_usable(tmp_path, models, keypair):
    store = tmp_path / "store"
    assert agent("install", _counted(tmp_path, models, keypair, 1), "--store", store).returncode == 0
    (store / "health.json").write_text(json.dumps({"failures": 7, "running": "yes",
                                                   "bundle_id": 3}))
    status = agent("status", "--store", store, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["recent_failures"] == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8, 1), np.float32))
    infer = agent("infer", "--store", store, "--input", tmp_path / "x.npy")  # crash counting runs
    assert infer.returncode == 0 and "argmax=" in infer.stdout, infer.stderr
    assert agent("install", _counted(tmp_path, models, keypair, 2), "--store", store).returncode == 0
    (store / "health.json").write_text('{"failures": [NaN]}')
    assert agent("status", "--store", store).returncode == 0


def test_control_characters_from_a_manifest_are_escaped(tmp_path, models, keypair):
    store = tmp_path / "store"
    evil = "digits\x1b]0;owned\x07\x1b[2J\u202etxt.exe"
    b = bundle(tmp_path / "evil.ekb", models["tflite"], "tflite", keypair[0], name=evil,
               version="1\r\n")
    for args in (("install", b), ("status",)):
        proc = agent(*args, "--store", store)
        assert proc.returncode == 0, proc.stderr
        assert not any(c in proc.stdout for c in "\x1b\x07\r\u202e"), repr(proc.stdout)
        assert "\\x1b]0;owned\\x07\\x1b[2J\\u202etxt.exe" in proc.stdout


def test_install_without_key_uses_the_agent_toml_key(tmp_path, models, keypair):
    store = tmp_path / "store"
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "dev1"\n[store]\nroot = "{store}"\npublic_key = "{keypair[1]}"\n')
    unsigned = bundle(tmp_path / "u.ekb", models["tflite"], "tflite", None)
    one_line_error(agent("install", unsigned, "--config", config), "not signed")
    assert not (store / "state.json").exists()
    signed = bundle(tmp_path / "s.ekb", models["tflite"], "tflite", keypair[0])
    proc = agent("install", signed, "--config", config)
    assert proc.returncode == 0 and "signature checked" in proc.stdout, proc.stderr


# --- finding 10: MCU bundles: arena, verifier, TFLM crash isolation -------------------------------

@pytest.mark.parametrize("arena, shown", [(0, "0"), (-4096, "-4096"), ("big", "'big'"),
                                          (True, "True"), (1 << 40, str(1 << 40)), (1.5e4, "15000.0")])
def test_mcu_arena_bytes_is_range_checked(arena, shown, tmp_path, models, keypair):
    files = [("model.tflite", models["tflite"], "model")]
    m = manifest_dict(manifest_for(models["tflite"], "tflite", family="mcu", arena=4096), files)
    m["target_report"]["arena_bytes"] = arena
    b = write_raw(tmp_path / "a.ekb", m, files, keypair[0])
    proc = agent("install", b, "--store", tmp_path / "store", "--key", keypair[1])
    one_line_error(proc, f"target_report.arena_bytes: {shown} is not an integer in 1024..67108864")


# Byte edits of the float digits model that crashed TFLM (SIGSEGV/SIGFPE) before the verifier.
CRASHING_EDITS = [[(155622, 148)], [(155297, 29)], [(155059, 225), (154390, 9)],
                  [(153908, 58), (153665, 100)], [(153928, 205)], [(2015, 59), (155664, 108)]]


@pytest.mark.parametrize("edits", CRASHING_EDITS, ids=lambda e: "+".join(f"{i}={v}" for i, v in e))
def test_mutated_tflite_in_an_mcu_bundle_is_a_clean_refusal(edits, tmp_path, models, keypair):
    model = bytearray(models["tflite"])
    for i, v in edits:
        model[i] = v
    b = bundle(tmp_path / "m.ekb", bytes(model), "tflite", keypair[0], family="mcu",
               arena=1 << 20, specs_from=models["tflite"])
    proc = agent("install", b, "--store", tmp_path / "store", "--key", keypair[1])
    one_line_error(proc, "corrupt TFLite flatbuffer")


def test_a_tflm_crash_in_the_selftest_is_a_clean_refusal(tmp_path, models, keypair):
    store = tmp_path / "store"
    good = bundle(tmp_path / "g.ekb", models["tflite"], "tflite", keypair[0], family="mcu",
                  arena=1 << 20)
    env = {**os.environ, "EDGEKIT_STORE_CRASH_AT": "selftest-child"}
    proc = agent("install", good, "--store", store, "--key", keypair[1], env=env)
    one_line_error(proc, "runtime crashed during the self-test (signal 9 SIGKILL)")
    assert not (store / "state.json").exists()
    ok = agent("install", good, "--store", store, "--key", keypair[1])
    assert ok.returncode == 0, ok.stderr
