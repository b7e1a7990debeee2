"""What does the agent's local HTTP API cost over calling the runtime by hand, and does it hold
up under half-open connections?

Same run, same model (the built-in float digits TFLite, packed into a real bundle and served
by a real ``edgekit-agent serve`` subprocess from a store):

- ``runner``: ``Runner(load_backend(model))`` called in this process (the floor);
- ``keepalive``: ``POST /v1/infer`` over one kept-alive ``http.client`` connection;
- ``new_connection``: one connection per request;
- ``half_open``: N connections that sent a request line and one header and then nothing;
  afterwards, the time a normal ``POST /v1/infer`` on a new connection takes to be answered.

    python tools/bench/http_latency.py [--calls 1000] [--half-open 2000]

The last stdout line is one JSON object: the p50/p90 of each side in ms, the ratios
``keepalive_over_runner`` and ``new_connection_over_keepalive``, ``http_overhead_ms_p50``
(keepalive p50 - runner p50) and the half-open figures. RLIMIT_NOFILE of this process is raised
to the hard limit when it is too low for the half-open sockets (the agent does not need it:
it holds at most ``http.max_connections``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "edgekit" / "examples" / "digits"


def write_bundle(out: Path) -> Path:
    from edgekit.bundle_writer import MemberFile
    from edgekit.bundle_writer import write_bundle as write
    from edgekit_agent.bundle.manifest import Manifest, ModelRef, Variant, sha256_hex
    from edgekit_agent.runtime import load_backend

    model = (DIGITS / "digits.tflite").read_bytes()
    backend = load_backend(model, "tflite")
    primary = Variant(name="primary", model=ModelRef("model.tflite", "tflite", sha256_hex(model),
                                                      len(model)),
                      inputs=backend.inputs, outputs=backend.outputs)
    manifest = Manifest(name="digits", version="1", target="x86-64", family="cpu", primary=primary,
                        members=())
    return write(out, manifest, [MemberFile("model.tflite", model, "model")])


def start_agent(work: Path) -> tuple[subprocess.Popen, int]:
    from edgekit_agent.store.slots import BundleStore

    store = work / "store"
    BundleStore(store).install(write_bundle(work / "digits.ekb"))
    config = work / "agent.toml"
    config.write_text(f'device_id = "bench"\n[store]\nroot = "{store}"\n[http]\nport = 0\n'
                      "[mqtt]\nenabled = false\n")
    log = (work / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "serve", "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read())
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"edgekit-agent serve exited: {log.read()[-500:]}")
        time.sleep(0.05)
    raise SystemExit("edgekit-agent serve did not start in 60 s")


def runner_times(image: np.ndarray, calls: int) -> list[float]:
    from edgekit_agent.runtime import Runner, load_backend

    runner = Runner(load_backend((DIGITS / "digits.tflite").read_bytes(), "tflite"))
    x = image[None]
    for _ in range(50):
        runner([x])
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        runner([x])
        out.append(time.perf_counter() - t0)
    return out


def post(conn: http.client.HTTPConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise SystemExit(f"agent answered {resp.status}: {data[:200]!r}")
    return time.perf_counter() - t0


def keepalive_times(port: int, body: bytes, calls: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(50):
        post(conn, body)
    out = [post(conn, body) for _ in range(calls)]
    conn.close()
    return out


def new_connection_times(port: int, body: bytes, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        post(conn, body)
        conn.close()
        out.append(time.perf_counter() - t0)
    return out


def half_open(port: int, body: bytes, n: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else n + 500, hard))
    sockets = []
    t0 = time.monotonic()
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")
            sockets.append(s)
        opened = time.monotonic() - t0
        answers = new_connection_times(port, body, 5)
    finally:
        for s in sockets:
            s.close()
    return {"half_open": n, "half_open_opened_s": round(opened, 3),
            "half_open_answer_ms": [round(a * 1e3, 2) for a in answers],
            "half_open_answer_ms_max": round(max(answers) * 1e3, 2)}


def summary(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {"p50": round(float(np.percentile(ms, 50)), 4), "p90": round(float(np.percentile(ms, 90)), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--half-open", type=int, default=2000)
    p.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    image = np.load(DIGITS / "test.npz")["image"][0].astype(np.float32)
    body = json.dumps({"inputs": {"image": image.tolist()}}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_agent(Path(tmp))
        try:
            sides = {"runner": summary(runner_times(image, args.calls)),
                     "keepalive": summary(keepalive_times(port, body, args.calls)),
                     "new_connection": summary(new_connection_times(port, body, args.calls // 4))}
            result: dict[str, Any] = {"model": "digits (float TFLite)", "calls": args.calls,
                                      **{f"{k}_ms": v for k, v in sides.items()}}
            result.update(half_open(port, body, args.half_open) if args.half_open else {})
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        finally:
            proc.terminate()
            proc.wait(15)
    r, k, n = sides["runner"]["p50"], sides["keepalive"]["p50"], sides["new_connection"]["p50"]
    result.update(keepalive_over_runner=round(k / r, 2), new_connection_over_keepalive=round(n / k, 2),
                  http_overhead_ms_p50=round(k - r, 4), agent_fds_after=fds)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
