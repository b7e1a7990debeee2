"""Issue 10, finding 8, acceptance figures against a real `edgekit-agent serve` subprocess.

- 2,000 half-open connections (request line and one header sent, never finished): a normal
  ``POST /v1/infer`` is still answered within 1 s. The agent holds at most
  ``http.max_connections`` (default 128) of them; newcomers evict the longest-idle one, so the
  agent needs no raised descriptor limit. This test process holds the 2,000 client sockets
  and raises its own RLIMIT_NOFILE soft limit to the hard limit when it is below 2,500.
- Keep-alive ``POST /v1/infer`` on the digits model: p50 <= 2 ms (it was 44 ms when headers
  and body left in two writes and met Nagle's algorithm and the delayed ACK).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest

from edgekit_agent.store.slots import BundleStore

HALF_OPEN = 2000


@pytest.fixture
def served(tmp_path, make_bundle, keypair):
    store = tmp_path / "store"
    BundleStore(store).install(make_bundle(), keypair[1])
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "bench"\n[store]\nroot = "{store}"\npublic_key = "{keypair[1]}"\n'
                      '[http]\nport = 0\n[mqtt]\nenabled = false\n')
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit_agent.cli", "serve", "--config",
                             str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    port = _wait_for_port(log, proc)
    yield "127.0.0.1", port, proc
    proc.terminate()
    proc.wait(15)


def _wait_for_port(log, proc) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read())
        if found:
            return int(found.group(1))
        assert proc.poll() is None, "serve exited"
        time.sleep(0.05)
    raise AssertionError("serve did not print its URL in 60 s")


def _body(digits) -> bytes:
    image = np.load(digits.eval)["image"][0].astype(np.float32)
    return json.dumps({"inputs": {"image": image.tolist()}}).encode()


def _post(conn: http.client.HTTPConnection, body: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    took = time.perf_counter() - t0
    assert resp.status == 200, data
    return took


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        assert hard == resource.RLIM_INFINITY or hard >= need, f"hard fd limit {hard} < {need}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY
                                                    else hard, hard))


def test_keep_alive_infer_p50_is_under_2_ms(served, digits):
    host, port, _ = served
    body = _body(digits)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(50):
        _post(conn, body)
    times = [_post(conn, body) for _ in range(500)]
    conn.close()
    p50, p90 = (float(np.percentile(times, q)) * 1e3 for q in (50, 90))
    print(f"keep-alive POST /v1/infer: p50 {p50:.3f} ms, p90 {p90:.3f} ms")
    assert p50 <= 2.0, (p50, p90)
    assert p90 < 20.0, (p50, p90)  # no 40 ms Nagle x delayed-ACK stalls


def test_2000_half_open_connections_do_not_starve_a_real_request(served, digits):
    host, port, proc = served
    _raise_fd_limit(HALF_OPEN + 500)
    body = _body(digits)
    sockets: list[socket.socket] = []
    try:
        t0 = time.monotonic()
        for _ in range(HALF_OPEN):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")  # never finished
            sockets.append(s)
        opened = time.monotonic() - t0
        answers = []
        for _ in range(5):
            t1 = time.perf_counter()
            conn = http.client.HTTPConnection(host, port, timeout=10)
            _post(conn, body)
            conn.close()
            answers.append(time.perf_counter() - t1)
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    finally:
        for s in sockets:
            s.close()
    print(f"{HALF_OPEN} half-open opened in {opened:.2f} s; normal requests answered in "
          f"{[round(a * 1e3, 1) for a in answers]} ms; agent holds {fds} fds")
    assert max(answers) < 1.0, answers
    assert statistics.median(answers) < 0.25, answers
    assert fds < 128 + 64, fds  # the cap, not the attacker, decides how many sockets it holds
