"""The local HTTP API over a real socket: 200s, and 4xx with a reason for every bad request."""

from __future__ import annotations

import http.client
import json
import socket

import numpy as np
import pytest

from edgekit_agent.errors import (
    EdgekitError,
    InputError,
    RateLimited,
    RuntimeBackendError,
    TransportError,
)
from edgekit_agent.service.agent import Agent
from edgekit_agent.service.http_api import HttpApi


@pytest.fixture(scope="module")
def api(bundle_factory):
    agent = Agent(bundle_factory("int8"))
    mode = {"now": "eco"}
    server = HttpApi(agent, port=0, mode=lambda: mode["now"], max_body_bytes=64 << 10).start()
    server.mode_box = mode
    yield server
    server.stop()


def _request(api, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    ctype = resp.getheader("Content-Type", "")
    return resp.status, (json.loads(raw) if ctype.startswith("application/json") else raw.decode())


def test_binds_loopback_by_default(api):
    assert api.host == "127.0.0.1"


def test_infer_returns_what_agent_infer_returns(api, images):
    status, body = _request(api, "POST", "/v1/infer", {"inputs": {"image": images[:1].tolist()}})
    assert status == 200
    want = api.agent.infer({"image": images[:1]})["logits"]
    got = np.asarray(body["outputs"]["logits"], dtype=np.float32)
    assert got.shape == (1, 10) and np.array_equal(got, want)
    assert body["bundle_id"] == api.agent.bundle_id
    # batch dim may be left out
    status, body = _request(api, "POST", "/v1/infer", {"inputs": {"image": images[0].tolist()}})
    assert status == 200 and np.array_equal(np.asarray(body["outputs"]["logits"], np.float32), want)


def test_health_mode_and_metrics(api, images):
    before = api.agent.stats()["count"]
    for _ in range(3):
        assert _request(api, "POST", "/v1/infer", {"inputs": {"image": images[1].tolist()}})[0] == 200
    status, health = _request(api, "GET", "/v1/health")
    assert status == 200 and health["status"] == "ok" and health["bundle_id"] == api.agent.bundle_id
    assert _request(api, "GET", "/v1/mode") == (200, {"mode": "eco"})
    api.mode_box["now"] = "performance"
    assert _request(api, "GET", "/v1/mode")[1]["mode"] == "performance"
    status, metrics = _request(api, "GET", "/v1/metrics")
    assert status == 200 and metrics["count"] == before + 3 and metrics["mode"] == "performance"
    assert metrics["latency_ms"]["p50"] > 0
    status, model = _request(api, "GET", "/v1/model")
    assert model["inputs"][0]["name"] == "image" and model["inputs"][0]["dtype"] == "int8"
    status, text = _request(api, "GET", "/metrics")
    assert status == 200
    assert f"edgekit_inferences_total {float(before + 3)!r}" in text
    assert 'edgekit_inference_latency_seconds{quantile="0.99"}' in text
    assert 'mode="performance"' in text


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not valid JSON"),
    ([1, 2], 400, 'body must be a JSON object {"inputs"'),
    ({"inputs": [1]}, 400, 'body must be a JSON object {"inputs"'),
    ({"inputs": {}, "x": 1}, 400, "unknown field(s) x"),
    ({"inputs": {"img": [0]}}, 400, "unknown input(s) 'img'"),
    ({"inputs": {"image": [[0.0] * 8] * 8}}, 400, "shape [8, 8] does not match [1, 8, 8, 1]"),
    ({"inputs": {"image": [[["a"] * 1] * 8] * 8}}, 400, "dtype <U1 not accepted"),
    ({"inputs": {"image": [[1.0], [2.0, 3.0]]}}, 400, "not a rectangular numeric array"),
])
def test_bad_requests_get_400_with_reason(api, body, status, fragment):
    got_status, got = _request(api, "POST", "/v1/infer", body)
    assert got_status == status and fragment in got["error"], got


def test_too_large_body_is_refused_unread(api):
    body = b"[" + b"0," * 40_000 + b"0]"
    status, got = _request(api, "POST", "/v1/infer", body)
    assert status == 413 and "exceeds the 65536 byte limit" in got["error"]


def test_unknown_paths_methods_and_missing_length(api):
    assert _request(api, "GET", "/v2/nothing") == (404, {"error": "no such endpoint /v2/nothing"})
    status, got = _request(api, "GET", "/v1/infer")
    assert status == 405 and got["error"] == "use POST"
    assert _request(api, "POST", "/v1/health", b"{}")[0] == 405
    with socket.create_connection((api.host, api.port), timeout=10) as s:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # the server closes after refusing
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.0 411") or reply.startswith("HTTP/1.1 411")
    assert "Content-Length is required" in reply


@pytest.mark.parametrize("error, status", [(RateLimited, 503), (InputError, 400),
                                           (RuntimeBackendError, 500), (EdgekitError, 500)])
def test_the_status_of_a_custom_infer_error_comes_from_its_class(bundle_factory, error, status):
    agent = Agent(bundle_factory("tflite"))

    def refuse(inputs):
        raise error("rate limit of 2 inferences/s reached")

    server = HttpApi(agent, port=0, infer=refuse).start()
    try:
        got_status, got = _request(server, "POST", "/v1/infer", {"inputs": {"image": [[0.0]]}})
        assert got_status == status == error.http_status
        assert got["error"] == "rate limit of 2 inferences/s reached"
        assert _request(server, "GET", "/v1/mode")[1] == {"mode": "default"}
    finally:
        server.stop()


def test_port_in_use_is_a_one_line_error(api):
    with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{api.port}"):
        HttpApi(api.agent, port=api.port)


def test_concurrent_requests_all_answered_correctly(api, images):
    from concurrent.futures import ThreadPoolExecutor

    want = [api.agent.infer(images[i])["logits"] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: _request(api, "POST", "/v1/infer",
                                                   {"inputs": {"image": images[i].tolist()}}), range(8)))
    for (status, body), w in zip(replies, want):
        assert status == 200 and np.array_equal(np.asarray(body["outputs"]["logits"], np.float32), w)
