"""`edgekit deploy` on a real Mosquitto with five real agent processes.

The five devices live for the whole module (agents are heavy on two cores); the tests run in file
order and each starts from what the previous one left, which it checks first:

1. a bundle signed with another key: the canary wave (one device) refuses it, the rollout halts;
2. a bundle with an ONNX variant, while dev-a lacks ONNX Runtime: dev-a's self-test fails in the
   canary wave, the rollout halts, dev-b (the other canary) is rolled back by a signed command,
   dev-c..e never receive it, and the report says which device failed and why;
3. dev-a gets ONNX Runtime back: the same bundle reaches all five;
4. version 3 while dev-e is offline, `edgekit deploy` killed mid-rollout and started again: it
   resumes (nobody installs twice) and dev-e installs when it returns;
5. version 4 passes its self-test but fails on live inputs: the canary's health window sees the
   error rate, the device rolls itself back to version 3, the rollout halts;
6. an agent killed mid-transfer resumes from its next chunk;
7. a lower ``security_version`` (anti-rollback): the canary refuses it, the rollout halts after
   the first wave; ``--allow-downgrade`` installs it and every store records the override.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgekit_agent.bundle.manifest import bundle_id
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry import schema

FLEET = "otafleet"
NAMES = ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e")
NO_ORT = "raise ImportError('onnxruntime is not installed on this device')\n"


@dataclass
class Device:
    name: str
    root: Path
    public_key: Path
    broker: object
    proc: subprocess.Popen | None = None
    without_onnxruntime: bool = False

    @property
    def store(self) -> BundleStore:
        return BundleStore(self.root / "store")

    def version(self) -> str:
        return self.store.status().active.version

    def start(self) -> None:
        cfg = self.root / "agent.toml"
        cfg.write_text(
            f'device_id = "{self.name}"\nfleet = "{FLEET}"\n'
            f'[store]\nroot = "{self.root / "store"}"\npublic_key = "{self.public_key}"\n'
            'max_failures = 1000\n'  # the OTA health gate judges a new bundle, not crash counting
            '[http]\nenabled = false\n'
            f'[mqtt]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
            'reconnect_min_s = 0.2\nreconnect_max_s = 1.0\nkeepalive = 5\n'
            f'[queue]\npath = "{self.root / "queue.sqlite"}"\n'
            '[sensors]\nkind = "simulated"\n[telemetry]\ninterval_s = 1.0\n[load]\nrate = 10.0\n')
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.without_onnxruntime:  # this board has no ONNX Runtime installed
            fake = self.root / "no-onnxruntime" / "onnxruntime"
            fake.mkdir(parents=True, exist_ok=True)
            (fake / "__init__.py").write_text(NO_ORT)
            env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env.get("PYTHONPATH", "")])
        log = (self.root / "agent.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "run", "--config",
                                      str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _online(sub, names, timeout=60.0, since=0):
    want = set(names)
    sub.wait_for(lambda m: not want.difference(
        n for n in want if any(x.payload and x.payload.get("state") == "online"
                               for x in sub.messages[since:]
                               if x.topic == schema.Topics(FLEET, n).status)),
        timeout, f"{sorted(want)} online", since=since)


@pytest.fixture(scope="module")
def devices(tmp_path_factory, broker, keypair, make_bundle):
    v1 = make_bundle(sign=True)  # the digits model, TFLite only
    made = []
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        BundleStore(root / "store").install(v1, keypair[1])
        d = Device(name, root, keypair[1], broker, without_onnxruntime=name == "dev-a")
        d.start()
        made.append(d)
    yield {d.name: d for d in made}
    for d in made:
        d.stop()
    for name in NAMES:  # leave nothing retained for other tests on the shared broker
        for kind in ("status", "ota"):
            _clear_retained(broker, schema.Topics(FLEET, name).topic(kind))


def _clear_retained(broker, topic):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy-state")


@pytest.fixture(scope="module")
def bundle_v2(power_bundle_v2):
    """Version 2 adds an ONNX variant (the power bundle: TFLite primary + ONNX)."""
    return power_bundle_v2


def _deploy_args(broker, state_dir, keypair, bundle, *extra):
    return [sys.executable, "-m", "edgekit.cli", "deploy", str(bundle), "--fleet", FLEET,
            "--broker", broker.url, "--key", str(keypair[0]), "--state", str(state_dir),
            "--health-s", "3", "--timeout", "60", "--json",
            # five agents and the suite share two cores: scheduling stalls of several ms are
            # normal here, a 2x p95 regression plus 25 ms is not
            "--latency-slack-ms", "25", *map(str, extra)]


def _deploy(*args, timeout=240):
    proc = subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(proc.stdout)


def _events(sub, kind, rollout):
    return [m for m in sub.of("event") if m.payload and m.payload["kind"] == kind
            and m.payload["data"].get("rollout") == rollout]


def test_wrong_signing_key_halts_after_first_wave(devices, broker, keypair, state_dir, collect,
                                                  tmp_path, power_bundle_v2, write_bundle_file):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    _online(sub, NAMES)
    other = generate_keypair(tmp_path / "intruder")
    b = open_bundle(power_bundle_v2)
    files = [(m.path, b.read(m.path), m.role) for m in b.manifest.members]
    forged = write_bundle_file(tmp_path / "forged.ekb", b.manifest, files, other[0])

    t0 = time.monotonic()
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, forged))  # waves 5,15,100
    assert proc.returncode == 1, proc.stderr
    assert out["halted"] and out["waves"][0]["devices"] == ["dev-a"]
    assert [f["device"] for f in out["failed"]] == ["dev-a"]
    assert "signature check failed" in out["failed"][0]["reason"]
    assert out["succeeded"] == [] and sorted(out["skipped"]) == list(NAMES[1:])
    assert "failure rate 1.00 (1 of 1 finished) > 0.2" in out["halt_reason"]
    assert {d.version() for d in devices.values()} == {"1"}
    received = {m.topic.split("/")[3] for m in _events(sub, "ota_received", out["rollout"])}
    assert received == {"dev-a"}  # nobody else was offered anything
    print(f"\nwrong key: halted after wave 1 in {time.monotonic() - t0:.1f} s: {out['failed']}")

    # The operator signs the offer with the wrong key: the canary refuses the offer itself.
    proc, out = _deploy(*_deploy_args(broker, state_dir, (other[0],), power_bundle_v2))
    assert proc.returncode == 1 and out["halted"], proc.stderr
    (failure,) = out["failed"]
    assert failure["device"] == "dev-a" and failure["reason"].startswith(
        "ota_failed: ota offer refused: ota offer signature rejected"), failure
    assert {d.version() for d in devices.values()} == {"1"} and len(out["skipped"]) == 4


def test_canary_halts_when_a_selftest_fails(devices, broker, keypair, state_dir, collect, bundle_v2):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    assert {d.version() for d in devices.values()} == {"1"}
    t0 = time.monotonic()
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, bundle_v2, "--waves", "40,100"))
    seconds = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert out["devices"] == list(NAMES) and out["halted"]
    assert out["waves"][0]["devices"] == ["dev-a", "dev-b"] and out["waves"][1]["reached"] is False
    (failure,) = out["failed"]
    assert failure["device"] == "dev-a"
    assert failure["reason"].startswith("selftest_failed: self-test failed, previous bundle stays active")
    assert "no ONNX runtime" in failure["reason"]
    assert out["rolled_back"] == ["dev-b"] and out["succeeded"] == []
    assert sorted(out["skipped"]) == ["dev-c", "dev-d", "dev-e"]
    # dev-a stays on its old bundle; dev-b ran v2 and was rolled back; the rest never got it.
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "1")
    assert devices["dev-b"].store.status().previous.version == "2"
    offered = {m.topic.split("/")[3] for m in _events(sub, "ota_received", out["rollout"])}
    assert offered == {"dev-a", "dev-b"}
    assert all(devices[n].store.status().previous is None for n in ("dev-c", "dev-d", "dev-e"))
    ok = _events(sub, "health_ok", out["rollout"])
    assert [m.topic.split("/")[3] for m in ok] == ["dev-b"]
    health = ok[0].payload["data"]["health"]
    assert health["after"]["count"] >= 5 and health["after"]["errors"] == 0
    print(f"\ncanary: halted in {seconds:.1f} s; dev-b health {health}")


def test_same_rollout_completes_when_every_device_can_run_it(devices, broker, keypair, state_dir,
                                                            collect, bundle_v2):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    fixed = devices["dev-a"]  # ONNX Runtime installed on the board now
    fixed.stop()
    fixed.without_onnxruntime = False
    mark = sub.mark()
    fixed.start()
    _online(sub, ["dev-a"], since=mark)
    t0 = time.monotonic()
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, bundle_v2, "--waves", "40,100"))
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stderr, out)
    assert sorted(out["succeeded"]) == list(NAMES) and not out["failed"] and not out["halted"]
    assert out["status"] == "done" and [len(w["devices"]) for w in out["waves"]] == [2, 3]
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "2")
    v2_id = bundle_id(open_bundle(bundle_v2).manifest)
    statuses = {m.topic.split("/")[3]: m.payload for m in sub.of("status") if m.payload}
    assert all(statuses[n]["bundle"]["id"] == v2_id for n in NAMES)  # republished after install
    print(f"\nall five on v2 in {seconds:.1f} s")


def _status(state_dir):
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "deploy", "status", "--fleet", FLEET,
                           "--state", str(state_dir), "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[-1]


def test_offline_device_and_killed_deploy_resume(devices, broker, keypair, state_dir, collect,
                                                 bundle_v2, tmp_path, write_bundle_file):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    b = open_bundle(bundle_v2)
    files = [(m.path, b.read(m.path), m.role) for m in b.manifest.members]
    v3 = write_bundle_file(tmp_path / "v3.ekb", b.manifest.replace(version="3"), files, keypair[0])
    devices["dev-e"].stop()  # offline for the first part of the rollout
    args = _deploy_args(broker, state_dir, keypair, v3, "--waves", "20,40,60,80,100", "--wait",
                        "--chunk-size", "16384", "--window", "4")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        status = _status(state_dir)
        if status["version"] == "3" and len(status["succeeded"]) >= 2:
            break
    else:
        raise AssertionError(f"no progress: {status}")
    first.kill()  # SIGKILL: no chance to save anything
    first.wait(10)
    killed_at = _status(state_dir)
    assert killed_at["status"] == "running" and len(killed_at["succeeded"]) < 5

    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sub.wait_for(lambda m: len({x.topic for x in _events(sub, "health_ok", killed_at["rollout"])})
                 >= 4, 120, "four devices healthy on v3")
    assert second.poll() is None  # still waiting for dev-e
    mark = sub.mark()
    devices["dev-e"].start()
    _online(sub, ["dev-e"], since=mark)
    out_text, err = second.communicate(timeout=120)
    out = json.loads(out_text)
    assert second.returncode == 0, (err, out)
    assert f"resuming rollout {killed_at['rollout']}" in err
    assert out["rollout"] == killed_at["rollout"] and sorted(out["succeeded"]) == list(NAMES)
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "3")
    installs = Counter(m.topic.split("/")[3] for m in _events(sub, "installed", out["rollout"]))
    assert installs == Counter(dict.fromkeys(NAMES, 1)), installs  # a resume installs nothing twice
    progress = [m for m in _events(sub, "ota_progress", out["rollout"])]
    assert progress, "16 KiB chunks in windows of 4: progress events in between"
    print(f"\nresume: killed with {len(killed_at['succeeded'])} done; dev-e installed on return; "
          f"installs per device {dict(installs)}")


def _gather_bundle(out, write_bundle_file, sign_key):
    """y = table[int(10 x)]: fine on zeros (the self-test), out of range for most live x in [0, 1)."""
    from onnx import TensorProto, helper

    from edgekit_agent.bundle.manifest import Manifest, ModelRef, Variant, sha256_hex
    from edgekit_agent.runtime import load_backend

    table = helper.make_tensor("table", TensorProto.FLOAT, [4, 3], list(range(12)))
    ten = helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "ten"], ["scaled"]),
         helper.make_node("Cast", ["scaled"], ["idx"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)], "gather",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [table, ten])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = model.SerializeToString()
    backend = load_backend(data, "onnx")
    primary = Variant(name="primary", model=ModelRef("model.onnx", "onnx", sha256_hex(data), len(data)),
                      inputs=backend.inputs, outputs=backend.outputs)
    manifest = Manifest(name="digits", version="4", target="x86-64", family="cpu", primary=primary,
                        members=())
    return write_bundle_file(out, manifest, [("model.onnx", data, "model")], sign_key)


def test_health_regression_rolls_the_canary_back(devices, broker, keypair, state_dir, collect,
                                                 tmp_path, write_bundle_file):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    assert {d.version() for d in devices.values()} == {"3"}
    v4 = _gather_bundle(tmp_path / "v4.ekb", write_bundle_file, keypair[0])
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, v4, "--waves", "20,100"))
    assert proc.returncode == 1 and out["halted"], (proc.stderr, out)
    (failure,) = out["failed"]
    assert failure["device"] == "dev-a" and failure["reason"].startswith(
        "health_failed: inference error rate"), failure
    assert out["rolled_back"] == ["dev-a"] and sorted(out["skipped"]) == list(NAMES[1:])
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "3")
    assert devices["dev-a"].store.status().previous.version == "4"
    (failed,) = _events(sub, "health_failed", out["rollout"])
    after = failed.payload["data"]["health"]["after"]
    assert after["errors"] >= 3 and after["errors"] / (after["errors"] + after["count"]) > 0.3
    assert [m.topic.split("/")[3] for m in _events(sub, "rolled_back", out["rollout"])] == ["dev-a"]
    assert [m.topic.split("/")[3] for m in _events(sub, "installed", out["rollout"])] == ["dev-a"]
    print(f"\nhealth gate: {failure['reason']}")


def test_agent_killed_mid_transfer_resumes_from_its_next_chunk(devices, broker, keypair, state_dir,
                                                              collect, tmp_path, bundle_v2,
                                                              write_bundle_file):
    sub = collect(broker, schema.subscription(FLEET, "#"))
    b = open_bundle(bundle_v2)
    files = [(m.path, b.read(m.path), m.role) for m in b.manifest.members]
    files.append(("payload.bin", os.urandom(6 << 20), "extra"))  # 6 MiB that deflate cannot shrink
    big = write_bundle_file(tmp_path / "v7.ekb", b.manifest.replace(version="7"), files, keypair[0])
    total = -(-big.stat().st_size // 16384)
    dev = devices["dev-c"]
    deploy = subprocess.Popen(_deploy_args(broker, state_dir, keypair, big, "--select", "device=dev-c",
                                           "--waves", "100", "--chunk-size", "16384", "--window", "16",
                                           "--wait"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    topic = schema.Topics(FLEET, "dev-c").event
    sub.wait_for(lambda m: m.topic == topic and m.payload["kind"] == "ota_progress"
                 and m.payload["data"]["next_chunk"] >= 64, 60, "64 chunks on dev-c")
    dev.proc.kill()  # power cut in the middle of the transfer
    dev.proc.wait(10)
    part = next((dev.root / "store" / ".ota").glob("*.part"))
    kept = part.stat().st_size
    assert kept >= 64 * 16384
    mark = sub.mark()
    dev.start()
    again = sub.wait_for(lambda m: m.topic == topic and m.payload["kind"] == "ota_received", 60,
                         "the offer seen after the restart", since=mark)
    assert again.payload["data"]["resumed"] is True
    resumed_at = again.payload["data"]["next_chunk"]
    assert 64 <= resumed_at <= kept // 16384 < total, (resumed_at, kept, total)
    out_text, err = deploy.communicate(timeout=180)
    out = json.loads(out_text)
    assert deploy.returncode == 0 and out["succeeded"] == ["dev-c"], (err, out)
    assert dev.version() == "7" and not list((dev.root / "store" / ".ota").glob("*.part"))
    chunks = [json.loads(m.raw) for m in sub.of("ota") if m.topic.endswith("/dev-c/ota") and m.raw]
    sent = [c["index"] for c in chunks if c["type"] == "chunk"]
    # resumed, not restarted: fewer chunks than a transfer from zero would have sent again
    assert len(set(sent)) == total and len(sent) < total + resumed_at, (len(sent), total)
    print(f"\nagent killed at chunk {resumed_at}/{total}: resumed there; {len(sent)} chunks sent "
          f"for {total}")


def test_older_security_version_halts_after_first_wave(devices, broker, keypair, state_dir,
                                                       tmp_path, make_bundle, write_bundle_file):
    # TFLite only: the refusal under test is the version floor, not a runtime dev-a may lack
    # (the ONNX variant of bundle_v2 fails dev-a's self-test when this runs before test 3).
    b = open_bundle(make_bundle(sign=True))
    files = [(m.path, b.read(m.path), m.role) for m in b.manifest.members]
    newer = write_bundle_file(tmp_path / "v5.ekb", b.manifest.replace(version="5", security_version=2),
                              files, keypair[0])
    older = write_bundle_file(tmp_path / "v6.ekb", b.manifest.replace(version="6", security_version=1),
                              files, keypair[0])
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, newer, "--waves", "100"))
    assert proc.returncode == 0 and sorted(out["succeeded"]) == list(NAMES), (proc.stderr, out)
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, older))  # waves 5,15,100
    assert proc.returncode == 1 and out["halted"], proc.stderr
    (failure,) = out["failed"]
    assert failure["device"] == "dev-a" and "security_version 1 is below 2" in failure["reason"]
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "5")
    assert len(out["skipped"]) == 4
    # The operator's explicit override: signed in the offer, recorded in every device's store.
    proc, out = _deploy(*_deploy_args(broker, state_dir, keypair, older, "--waves", "100",
                                      "--allow-downgrade"))
    assert proc.returncode == 0 and sorted(out["succeeded"]) == list(NAMES), (proc.stderr, out)
    assert {n: devices[n].version() for n in NAMES} == dict.fromkeys(NAMES, "6")
    for n in NAMES:
        state = json.loads((devices[n].root / "store" / "state.json").read_text())
        assert state["security_version"] == 2  # the floor stays the highest ever installed
        assert state["last"]["downgrade"] == {"from_security_version": 2,
                                              "to_security_version": 1,
                                              "allowed_by": "allow_downgrade"}
