"""Issue 10, finding 8: the HTTP API under hostile clients, over real sockets.

JSON for every status (also the stdlib's own 400/431/501/505), strict bodies (one
Content-Length, no NaN/Infinity, no duplicate keys), a bearer token that is required beyond
loopback, header/body deadlines that a trickling peer cannot stretch, and a connection cap
that evicts the longest-idle connection instead of locking out a real client.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from edgekit_agent.config import AgentConfig
from edgekit_agent.errors import ConfigError
from edgekit_agent.service.agent import Agent
from edgekit_agent.service.http_api import HttpApi
from edgekit_agent.service.http_server import ConnectionLimits

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def agent(bundle_factory):
    return Agent(bundle_factory("tflite"))


@pytest.fixture
def serve(agent):
    started: list[HttpApi] = []

    def make(**options) -> HttpApi:
        api = HttpApi(agent, port=0, max_body_bytes=64 << 10, **options).start()
        started.append(api)
        return api

    yield make
    for api in started:
        api.stop()


def _exchange(api: HttpApi, raw: bytes, timeout: float = 10) -> tuple[int, dict, str]:
    """Send raw bytes, read until the server closes; (status, JSON body, head)."""
    with socket.create_connection((api.host, api.port), timeout=timeout) as s:
        s.sendall(raw)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(None, 2)[1])
    assert b"Content-Type: application/json" in head, head
    return status, json.loads(body), head.decode()


def _post(body: bytes, extra: str = "") -> bytes:
    return (f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("raw, status, fragment", [
    (b"garbage\r\n\r\n", 400, "Bad request"),
    (b"BREW /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n", 501, "Unsupported method ('BREW')"),
    (b"GET /v1/health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "Invalid HTTP version"),
    (b"GET /v1/health HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "exceed 32768 bytes"),
    (b"GET /v1/health HTTP/1.1\r\n" + b"X: 1\r\n" * 120 + b"\r\n", 431, "Too many headers"),
    (b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "no such endpoint"),
    (b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n", 411, "Content-Length is required"),
    (_post(b"{}", "Content-Length: 2\r\n"), 400, "2 Content-Length headers"),
    (b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}", 400,
     "bad Content-Length '+2'"),
    (b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501,
     "Transfer-Encoding is not supported"),
    (b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413,
     "exceeds the 65536 byte limit"),
])
def test_every_refusal_is_json(serve, raw, status, fragment):
    got, body, _ = _exchange(serve(), raw)
    assert got == status and fragment in body["error"], (got, body)


@pytest.mark.parametrize("text, fragment", [
    ('{"inputs": {"image": [NaN]}}', "NaN is not a number"),
    ('{"inputs": {"image": [Infinity]}}', "Infinity is not a number"),
    ('{"inputs": {"image": [-Infinity]}}', "-Infinity is not a number"),
    ('{"inputs": {"image": [1e999]}}', "1e999 overflows a float"),
    ('{"inputs": {"image": [1]}, "inputs": {"image": [2]}}', "duplicate key 'inputs'"),
])
def test_non_finite_numbers_and_duplicate_keys_are_refused(serve, text, fragment):
    got, body, _ = _exchange(serve(), _post(text.encode()))
    assert got == 400 and fragment in body["error"], body


def test_bearer_token(serve, images):
    api = serve(token=TOKEN)
    good = json.dumps({"inputs": {"image": images[0].tolist()}}).encode()
    status, body, head = _exchange(api, _post(good))
    assert status == 401 and body == {"error": "missing or wrong bearer token"}
    assert 'WWW-Authenticate: Bearer realm="edgekit-agent"' in head
    assert _exchange(api, _post(good, "Authorization: Bearer wrong\r\n"))[0] == 401
    status, body, _ = _exchange(api, _post(good, f"Authorization: Bearer {TOKEN}\r\n"))
    assert status == 200 and len(body["outputs"]["logits"][0]) == 10
    raw = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n"
    assert _exchange(api, raw.replace(b"{}", b""))[0] == 401
    assert _exchange(api, raw.replace(b"{}", f"Authorization: bearer {TOKEN}\r\n".encode()))[0] == 200


def test_beyond_loopback_needs_a_token(agent, tmp_path):
    with pytest.raises(ConfigError, match="needs a bearer token"):
        HttpApi(agent, host="0.0.0.0", port=0)
    api = HttpApi(agent, host="0.0.0.0", port=0, token=TOKEN)  # allowed with one
    api.stop()
    base = {"device_id": "d1", "store": {"root": str(tmp_path)}, "http": {"host": "0.0.0.0"}}
    with pytest.raises(ConfigError, match=r"beyond loopback \(key 'http.token_file'\)"):
        AgentConfig.from_dict(base)
    (tmp_path / "tok").write_text("short\n")
    cfg = AgentConfig.from_dict({**base, "http": {"host": "0.0.0.0", "token_file": "tok"}},
                                base=tmp_path)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        cfg.http.read_token()
    assert AgentConfig.from_dict({**base, "http": {"host": "::1"}}).http.token_file is None


def test_a_trickling_peer_cannot_stretch_the_header_deadline(serve):
    api = serve(limits=ConnectionLimits(header_timeout_s=1.0))
    t0 = time.monotonic()
    closed_after = None
    with socket.create_connection((api.host, api.port), timeout=5) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\n")
        for _ in range(40):  # one header byte every 0.1 s: would take 4 s
            try:
                s.sendall(b"X")
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.1)
    assert closed_after is not None and 0.9 <= closed_after <= 2.0, closed_after


def test_a_slow_body_gets_408_at_the_body_deadline(serve):
    api = serve(limits=ConnectionLimits(body_timeout_s=1.0))
    t0 = time.monotonic()
    with socket.create_connection((api.host, api.port), timeout=10) as s:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in")
        reply = s.recv(65536)
    waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408") and b"body not received within 1 s" in reply
    assert 0.9 <= waited <= 2.0, waited


def test_cap_evicts_the_longest_idle_connection_and_refuses_when_all_are_busy(agent, images):
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow(inputs):
        entered.release()
        release.wait(10)
        return agent.infer(inputs)

    api = HttpApi(agent, port=0, infer=slow, limits=ConnectionLimits(max_connections=3)).start()
    try:
        idle = [socket.create_connection((api.host, api.port)) for _ in range(3)]
        time.sleep(0.3)
        status, body, _ = _exchange(api, b"GET /v1/mode HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (status, body) == (200, {"mode": "default"})
        assert api.server.evicted >= 1 and idle[0].recv(1) == b""  # the oldest was closed
        body = json.dumps({"inputs": {"image": images[0].tolist()}}).encode()
        busy = [socket.create_connection((api.host, api.port)) for _ in range(3)]
        for s in busy:
            s.sendall(_post(body))
        for _ in busy:
            assert entered.acquire(timeout=10)
        status, reply, head = _exchange(api, b"GET /v1/mode HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and reply == {"error": "too many connections"} and "Retry-After" in head
        release.set()
        for s in busy:
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        for s in idle + busy:
            s.close()
    finally:
        release.set()
        api.stop()


def test_a_bug_behind_a_route_is_a_json_500_and_the_server_keeps_serving(agent, images):
    def broken(inputs):
        raise ValueError("a bug")

    api = HttpApi(agent, port=0, infer=broken).start()
    try:
        body = json.dumps({"inputs": {"image": images[0].tolist()}}).encode()
        status, reply, _ = _exchange(api, _post(body))
        assert status == 500 and reply == {"error": "internal error: ValueError"}
        raw = b"GET /v1/mode HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert _exchange(api, raw)[:2] == (200, {"mode": "default"})
    finally:
        api.stop()
