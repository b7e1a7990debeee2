"""Fleet scale: N simulated devices at 1 Hz through Mosquitto to one coordinator.

    python tools/bench/fleet_scale.py --devices 10000 --seconds 20 [--processes P]
        [--connections C] [--offload-rate R] [--broker HOST:PORT] [--out FILE]

Starts a Mosquitto of its own (unless ``--broker``), the coordinator as a subprocess
(`edgekit coordinator run`), P simulator processes with C MQTT connections each (devices share
connections: the broker's connection count is the broker's concern, not the coordinator's),
one simulated worker and one requester. Every device publishes a retained ``status`` once and an
agent-shaped ``telemetry`` (QoS 1, the agent's QoS) every second, spread over the second. The
requester sends ``offload/req`` at R/s through the coordinator to the worker, which answers at
once, and as many straight to the worker (no coordinator) for the baseline.

Measured over the last S seconds, after a warm-up of one telemetry round:
``msgs_per_s`` (telemetry the registry took in), ``coordinator_cpu_cores`` (the coordinator
process's user+system CPU time over wall time, from /proc), ``registry_lag_p99_ms`` (payload
``ts`` to registry update), ``offload_overhead_p50_ms`` (median round trip through the
coordinator minus median direct round trip: routing plus the extra broker hop),
``requests`` and ``lost_requests`` (requests without any answer within 2 s).
The last line is that JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from local_broker import start_mosquitto

FLEET = "scale"
BUNDLE = {"id": "bench-bundle", "name": "bench", "version": "1", "target": "x86-64",
          "variant": "float", "threads": 1}


def start_broker(workdir: Path) -> tuple[subprocess.Popen, int]:
    return start_mosquitto(workdir, "set_tcp_nodelay true\nmax_queued_messages 1000000\n"
                           "max_inflight_messages 1000\npersistence false\n"
                           f"log_dest file {workdir}/mosquitto.log\n")


def _client(name: str, host: str, port: int):
    import paho.mqtt.client as mqtt

    from edgekit_agent.service.offload import no_delay

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_socket_open = no_delay
    c.connect(host, port, keepalive=60)
    c.loop_start()
    return c


def _telemetry(device: str) -> str:
    """An agent-shaped telemetry body with %SEQ% and %TS% to fill in (the sizes are real)."""
    body = {"schema": "edgekit.telemetry/1", "device": device, "seq": "%SEQ%", "ts": "%TS%",
            "interval_s": 1.0, "mode": "performance", "override": None, "active_rules": [],
            "inference": {"count": 1000, "errors": 0, "rejected": 0, "count_interval": 10,
                          "errors_interval": 0, "per_s": 10.0, "busy_s_interval": 0.01,
                          "latency_ms": {"p50": 1.2, "p95": 1.9, "p99": 2.4}},
            "limits": {"max_inferences_per_s": None, "duty_cycle": 1.0, "offload_allowed": False},
            "sensors": {"ts": 0.0, "temperature_c": 48.5, "battery_pct": 91.0, "charging": False,
                        "power_w": None, "cpu_freq_mhz": 1500.0, "governor": "ondemand",
                        "throttle": {}, "zones": {"cpu": 48.5}},
            "bundle": BUNDLE, "energy": {"per_inference_j": 0.4}, "memory": {"rss_bytes": 61e6},
            "uptime_s": 100.0, "queue": {"depth": 0, "dropped": 0, "dropped_total": 0,
                                         "connected": True, "connects": 1}}
    return json.dumps(body, separators=(",", ":")).replace('"%SEQ%"', "%SEQ%").replace(
        '"%TS%"', "%TS%")


class RawPublisher:
    """One simulator connection: MQTT 3.1.1 PUBLISH packets written in batches (a Python MQTT
    client spends ~50 µs a message; the devices being simulated would not)."""

    def __init__(self, name: str, host: str, port: int) -> None:
        from edgekit.fleet.coordinator.ingest import connect_packet

        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(name, 60))
        if self.sock.recv(4)[:1] != b"\x20":
            raise SystemExit("error: the broker refused a simulator connection")
        self.packet_id = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:  # PUBACKs and PINGRESPs: read and forget
        try:
            while self.sock.recv(1 << 16):
                pass
        except OSError:
            pass

    def packet(self, topic: str, payload: bytes, retain: bool = False) -> bytes:
        from edgekit.fleet.coordinator.ingest import _packet, _utf8

        self.packet_id = self.packet_id % 65535 + 1
        return _packet(0x32 | int(retain), _utf8(topic) + self.packet_id.to_bytes(2, "big") + payload)


def simulate(index: int, devices: list[str], host: str, port: int, connections: int,
             stop_at: float, sent: mp.Value) -> None:
    """One simulator process: its devices' status once, then telemetry at 1 Hz each, QoS 1."""
    links = [RawPublisher(f"sim-{index}-{i}-{uuid.uuid4().hex[:6]}", host, port)
             for i in range(connections)]
    templates = [(f"edgekit/v1/{FLEET}/{d}/telemetry", _telemetry(d)) for d in devices]
    for i, d in enumerate(devices):
        status = {"schema": "edgekit.status/1", "device": d, "seq": 1, "ts": time.time(),
                  "state": "online", "bundle": BUNDLE, "mode": "performance",
                  "offload_allowed": False, "offload": None}
        link = links[i % connections]
        link.sock.sendall(link.packet(f"edgekit/v1/{FLEET}/{d}/status",
                                      json.dumps(status).encode(), retain=True))
    seq, n, tick = 2, len(devices), 0.01
    while time.time() < stop_at:
        second = time.time()
        batches: list[list[bytes]] = [[] for _ in links]
        for i, (topic, template) in enumerate(templates):
            due = second + i / n  # spread over the second, written every 10 ms
            if due - time.time() > tick:
                _flush(links, batches)
                time.sleep(max(0.0, due - time.time()))
            payload = template.replace("%SEQ%", str(seq)).replace("%TS%", f"{time.time():.6f}")
            batches[i % connections].append(links[i % connections].packet(topic, payload.encode()))
        _flush(links, batches)
        with sent.get_lock():
            sent.value += n
        seq += 1
        rest = second + 1.0 - time.time()
        if rest > 0:
            time.sleep(rest)
    for link in links:
        link.sock.close()


def _flush(links: list[RawPublisher], batches: list[list[bytes]]) -> None:
    for link, batch in zip(links, batches):
        if batch:
            link.sock.sendall(b"".join(batch))
            batch.clear()


class Offload:
    """A worker that answers at once, and a requester timing round trips with and without the
    coordinator in the path."""

    def __init__(self, host: str, port: int) -> None:
        import numpy as np

        from edgekit_agent.telemetry import offload_schema, tensorwire

        self.schema, self.blob = offload_schema, tensorwire.encode(
            {"image": np.zeros((1, 8, 8, 1), np.float32)})
        self.worker = _client(f"bench-worker-{uuid.uuid4().hex[:6]}", host, port)
        self.requester = _client(f"bench-req-{uuid.uuid4().hex[:6]}", host, port)
        self.base = f"edgekit/v1/{FLEET}"
        self.sent: dict[str, tuple[float, str]] = {}
        self.rtt: dict[str, list[float]] = {"coordinator": [], "direct": []}
        self.answered: set[str] = set()
        self.run_local = 0
        self.lock = threading.Lock()
        self.worker.on_message = self._on_work
        self.requester.on_message = self._on_answer
        self.worker.subscribe(f"{self.base}/worker/offload/work", qos=1)
        self.requester.subscribe(f"{self.base}/requester/offload/resp", qos=1)
        status = {"schema": "edgekit.status/1", "device": "worker", "seq": 1, "ts": time.time(),
                  "state": "online", "bundle": BUNDLE, "mode": "performance",
                  "offload_allowed": False, "offload": {"worker": True, "service_ms_p50": 0.1}}
        self.worker.publish(f"{self.base}/worker/status", json.dumps(status), qos=1, retain=True)

    def _header(self, kind: str, device: str, cid: str, **body) -> dict:
        return {"schema": f"edgekit.{kind.replace('/', '_')}/1", "device": device, "seq": 1,
                "ts": time.time(), "correlation_id": cid, **body}

    def _on_work(self, client, userdata, msg) -> None:
        frame = self.schema.parse(msg.payload, "offload/work")
        head = self._header("offload/resp", "worker", frame.correlation_id, status="ok",
                            served_by="worker", service_ms=0.0)
        client.publish(frame.header["reply_to"], self.schema.frame(head, frame.blob), qos=1)

    def _on_answer(self, client, userdata, msg) -> None:
        frame = self.schema.parse(msg.payload, "offload/resp")
        now = time.perf_counter()
        with self.lock:
            if frame.correlation_id in self.answered or frame.correlation_id not in self.sent:
                return
            self.answered.add(frame.correlation_id)
            t0, path = self.sent[frame.correlation_id]
            if frame.header["status"] == "ok":
                self.rtt[path].append((now - t0) * 1e3)
            else:
                self.run_local += 1

    def request(self, direct: bool) -> None:
        cid = uuid.uuid4().hex
        reply_to = f"{self.base}/requester/offload/resp"
        common = {"reply_to": reply_to, "deadline_ms": 2000, "bundle": "bench",
                  "bundle_id": BUNDLE["id"]}
        if direct:
            head = self._header("offload/work", "requester", cid, origin="requester", **common)
            topic = f"{self.base}/worker/offload/work"
        else:
            head = self._header("offload/req", "requester", cid, **common)
            topic = f"{self.base}/requester/offload/req"
        with self.lock:
            self.sent[cid] = (time.perf_counter(), "direct" if direct else "coordinator")
        self.requester.publish(topic, self.schema.frame(head, self.blob), qos=1)

    def lost(self) -> tuple[int, int]:
        """(requests through the coordinator, of those never answered)."""
        with self.lock:
            mine = [c for c, (_, path) in self.sent.items() if path == "coordinator"]
            return len(mine), sum(1 for c in mine if c not in self.answered)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(url: str, reset: bool = False) -> dict:
    with urllib.request.urlopen(url + "/api/stats" + ("?reset=1" if reset else ""), timeout=10) as r:
        return json.loads(r.read())


def median(values: list[float]) -> float | None:
    return round(sorted(values)[len(values) // 2], 3) if values else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--processes", type=int, default=0, help="simulator processes (default: auto)")
    p.add_argument("--connections", type=int, default=2, help="MQTT connections per process")
    p.add_argument("--offload-rate", type=float, default=20.0, help="offload requests per second")
    p.add_argument("--broker", help="use this broker instead of starting one")
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = p.parse_args()
    if args.devices < 1 or args.seconds <= 0:
        print("error: --devices must be >= 1 and --seconds > 0", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    broker = None
    if args.broker:
        host, _, port_text = args.broker.rpartition(":")
        port = int(port_text)
    else:
        broker, port = start_broker(work)
        host = "127.0.0.1"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli", "coordinator", "run", "--broker", f"{host}:{port}",
         "--fleet", FLEET, "--http", "127.0.0.1:0", "--state", str(work / "state")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=(work / "coord.log").open("wb"))
    try:
        return run(args, host, port, coordinator, work)
    finally:
        coordinator.send_signal(signal.SIGTERM)
        coordinator.wait(30)
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def run(args: argparse.Namespace, host: str, port: int, coordinator: subprocess.Popen,
        work: Path) -> int:
    url = coordinator.stdout.readline().decode().strip().rsplit(" ", 1)[-1]
    processes = args.processes or max(1, min(6, (args.devices + 1999) // 2000))
    names = [f"d{i:06d}" for i in range(args.devices)]
    warmup = 3.0
    stop_at = time.time() + warmup + args.seconds + 1.0
    sent = mp.Value("q", 0)
    sims = [mp.Process(target=simulate, args=(i, names[i::processes], host, port,
                                              args.connections, stop_at, sent), daemon=True)
            for i in range(processes)]
    for s in sims:
        s.start()
    offload = Offload(host, port)
    time.sleep(warmup)
    before, cpu0, t0 = stats(url, reset=True), cpu_seconds(coordinator.pid), time.monotonic()
    interval = 1.0 / args.offload_rate if args.offload_rate > 0 else None
    direct = False
    while time.monotonic() - t0 < args.seconds:
        if interval:
            offload.request(direct)
            direct = not direct
            time.sleep(interval / 2)
        else:
            time.sleep(0.1)
    elapsed, cpu1 = time.monotonic() - t0, cpu_seconds(coordinator.pid)
    after = stats(url)
    time.sleep(2.0)  # let the last answers arrive (the 2 s loss horizon)
    for s in sims:
        s.join(10)
    requests, lost = offload.lost()
    msgs = after["registry"]["telemetry"] - before["registry"]["telemetry"]
    through, direct_ms = median(offload.rtt["coordinator"]), median(offload.rtt["direct"])
    result = {"devices": args.devices, "msgs_per_s": round(msgs / elapsed, 1),
              "coordinator_cpu_cores": round((cpu1 - cpu0) / elapsed, 3),
              "registry_lag_p99_ms": after["registry"]["lag_ms_p99"],
              "offload_overhead_p50_ms": (round(through - direct_ms, 3)
                                          if through is not None and direct_ms is not None else None),
              "requests": requests, "lost_requests": lost,
              "registry_lag_p50_ms": after["registry"]["lag_ms_p50"],
              "offload_rtt_p50_ms": through, "direct_rtt_p50_ms": direct_ms,
              "coordinator_routing_p50_ms": after["coordinator"]["overhead_ms_p50"],
              "run_local_answers": offload.run_local, "devices_in_registry": after["registry"]["devices"],
              "published_per_s": round(sent.value / (warmup + args.seconds + 1.0), 1),
              "simulator_processes": processes, "connections": processes * args.connections,
              "seconds": round(elapsed, 2)}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
