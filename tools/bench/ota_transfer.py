"""How fast does `edgekit deploy` move a bundle over MQTT, by chunk size?

A real Mosquitto on loopback, N real agents (``edgekit-agent run``, no inference load), and for
each chunk size a fresh bundle (the digits model plus an incompressible extra member of
``--size-mb``) deployed in one wave with ``--health-s 0``. Per run: the deploy's wall time and,
from the devices' own events, the time from ``ota_received`` to ``installed`` (chunks over MQTT,
sha256 checks, signature check, A/B copy and self-test).

    python tools/bench/ota_transfer.py [--size-mb 8] [--chunk-kib 16,64,256] [--devices 1]

The last stdout line is one JSON object: ``size_bytes``, ``devices``, ``runs`` (``chunk_bytes``,
``deploy_s``, ``receive_install_s`` (slowest device), ``mb_per_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from local_broker import start_mosquitto

from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit_agent.bundle.manifest import Manifest, ModelRef, Variant, sha256_hex
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.runtime import load_backend
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry import schema

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "edgekit" / "examples" / "digits" / "digits.tflite"
FLEET = "bench"


def _bundle(out: Path, version: str, extra: bytes, key: Path) -> Path:
    model = DIGITS.read_bytes()
    backend = load_backend(model, "tflite")
    primary = Variant(name="float", model=ModelRef("model.tflite", "tflite", sha256_hex(model),
                                                   len(model)),
                      inputs=backend.inputs, outputs=backend.outputs)
    manifest = Manifest(name="digits", version=version, target="x86-64", family="cpu",
                        primary=primary, members=())
    files = [MemberFile("model.tflite", model, "model")]
    if extra:
        files.append(MemberFile("payload.bin", extra, "extra"))
    return write_bundle(out, manifest, files, key)


def _agent(root: Path, name: str, port: int, pub: Path, v1: Path) -> subprocess.Popen:
    BundleStore(root / "store").install(v1, pub)
    cfg = root / "agent.toml"
    cfg.write_text(f'device_id = "{name}"\nfleet = "{FLEET}"\n[store]\nroot = "{root / "store"}"\n'
                   f'public_key = "{pub}"\n[http]\nenabled = false\n[mqtt]\nhost = "127.0.0.1"\n'
                   f'port = {port}\nreconnect_min_s = 0.2\n[queue]\npath = "{root / "q.sqlite"}"\n'
                   '[sensors]\nkind = "simulated"\n[telemetry]\ninterval_s = 5.0\n')
    log = (root / "agent.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "run", "--config", str(cfg)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


class Events:
    """Every event of the fleet, with the device's own timestamps."""

    def __init__(self, port: int) -> None:
        self.items: list[dict[str, Any]] = []
        self.online: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *a: c.subscribe([(schema.subscription(FLEET, "event"), 1),
                                                             (schema.subscription(FLEET, "status"), 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            return
        obj = json.loads(msg.payload)
        with self._lock:
            if msg.topic.endswith("/status") and obj.get("state") == "online":
                self.online.add(obj["device"])
            elif msg.topic.endswith("/event"):
                self.items.append(obj)

    def span(self, rollout: str, device: str) -> float:
        with self._lock:
            mine = [e for e in self.items if e["device"] == device
                    and (e.get("data") or {}).get("rollout") == rollout]
        start = min(e["ts"] for e in mine if e["kind"] == "ota_received")
        end = min(e["ts"] for e in mine if e["kind"] == "installed")
        return end - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=8.0)
    ap.add_argument("--chunk-kib", default="16,64,256")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    chunk_sizes = [int(k) << 10 for k in args.chunk_kib.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key, pub = generate_keypair(tmp / "fleet")
        broker, port = start_mosquitto(tmp, "user root\n")
        agents = []
        try:
            v1 = _bundle(tmp / "v1.ekb", "1", b"", key)
            names = [f"bench-{i}" for i in range(args.devices)]
            events = Events(port)
            for name in names:
                (tmp / name).mkdir()
                agents.append(_agent(tmp / name, name, port, pub, v1))
            deadline = time.monotonic() + 60
            while set(names) - events.online and time.monotonic() < deadline:
                time.sleep(0.1)
            size = int(args.size_mb * (1 << 20))
            runs = [_run(tmp, i, chunk, size, key, port, names, events)
                    for i, chunk in enumerate(chunk_sizes)]
        finally:
            for a in agents:
                a.terminate()
                a.wait(20)
            broker.terminate()
            broker.wait(10)
    result = {"size_bytes": runs[0]["size_bytes"], "devices": args.devices, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _run(tmp: Path, i: int, chunk: int, size: int, key: Path, port: int, names: list[str],
         events: Events) -> dict[str, Any]:
    bundle = _bundle(tmp / f"v{i + 2}.ekb", str(i + 2), os.urandom(size), key)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "deploy", str(bundle), "--fleet",
                           FLEET, "--broker", f"127.0.0.1:{port}", "--key", str(key), "--state",
                           str(tmp / "state"), "--waves", "100", "--health-s", "0",
                           "--chunk-size", str(chunk), "--json"], capture_output=True, text=True)
    deploy_s = time.monotonic() - t0
    out = json.loads(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"deploy failed: {out['failed'] or proc.stderr}")
    span = max(events.span(out["rollout"], n) for n in names)
    size_bytes = bundle.stat().st_size
    run = {"chunk_bytes": chunk, "size_bytes": size_bytes, "deploy_s": round(deploy_s, 3),
           "receive_install_s": round(span, 3), "mb_per_s": round(size_bytes / span / 1e6, 2)}
    print(json.dumps(run), file=sys.stderr)
    return run


if __name__ == "__main__":
    sys.exit(main())
