"""The local HTTP endpoint (stdlib only), for other processes on the device.

    POST /v1/infer    {"inputs": {name: nested list}}  ->  {"outputs": {name: nested list}, ...}
    GET  /v1/health   liveness and the bundle that runs
    GET  /v1/model    input/output specs of the running variant
    GET  /v1/mode     {"mode": ...} from the callable the daemon passes in
    GET  /v1/metrics  Agent.stats() as JSON
    GET  /metrics     the same in Prometheus text format

Bound to 127.0.0.1 unless told otherwise. Every refusal is a 4xx/5xx with ``{"error": reason}``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from ..config import AgentConfig
from ..defaults import HTTP_HOST, HTTP_MAX_BODY_BYTES, HTTP_PORT
from ..errors import EdgekitError, TransportError
from .agent import Agent

InferFn = Callable[[dict[str, Any]], dict[str, np.ndarray]]


class HttpApi:
    """``HttpApi(agent).start()`` serves in a background thread; ``stop()`` shuts it down.

    ``infer`` replaces ``agent.infer`` for POST /v1/infer (e.g. a rate-limited wrapper). An
    ``EdgekitError`` it raises is answered with the class's ``http_status`` (``InputError`` 400,
    ``RateLimited`` 503, ``RuntimeBackendError`` and the rest 500).
    """

    def __init__(self, agent: Agent, *, host: str = HTTP_HOST, port: int = HTTP_PORT,
                 mode: Callable[[], str] | None = None, max_body_bytes: int = HTTP_MAX_BODY_BYTES,
                 infer: InferFn | None = None,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.agent = agent
        self.mode = mode or (lambda: "default")
        self.health = health or (lambda: {})  # the daemon adds its links' state
        self.max_body_bytes = max_body_bytes
        self.infer = infer or agent.infer
        try:
            self._server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._server.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, agent: Agent, config: AgentConfig, *, mode: Callable[[], str] | None = None,
                    infer: InferFn | None = None,
                    health: Callable[[], dict[str, Any]] | None = None) -> HttpApi:
        return cls(agent, host=config.http.host, port=config.http.port, mode=mode,
                   max_body_bytes=config.http.max_body_bytes, infer=infer, health=health)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpApi:
        self._thread = threading.Thread(target=self._server.serve_forever, name="edgekit-http",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgekit-agent"

    @property
    def api(self) -> HttpApi:
        return self.server.api  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are counted in the metrics; the journal stays quiet

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        routes = {"/v1/health": self._health, "/v1/model": self._model, "/v1/mode": self._mode,
                  "/v1/metrics": self._metrics_json, "/metrics": self._metrics_prometheus}
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send_error(405 if self.path == "/v1/infer" else 404,
                             "use POST" if self.path == "/v1/infer" else f"no such endpoint {self.path}")
            return
        route()

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/v1/infer":
            self._send_error(404 if not self.path.startswith("/v1/") else 405,
                             f"no POST endpoint {self.path}")
            return
        try:
            body = self._read_json()
            outputs = self.api.infer(_parse_inputs(body))
        except _HttpError as exc:
            self._send_error(exc.status, str(exc))
            return
        except EdgekitError as exc:
            self._send_error(exc.http_status, str(exc))
            return
        agent = self.api.agent
        self._send_json(200, {"outputs": {k: _jsonable(v) for k, v in outputs.items()},
                              "bundle_id": agent.bundle_id, "variant": agent.variant})

    # --- GET handlers ---------------------------------------------------------------------

    def _health(self) -> None:
        a = self.api.agent
        self._send_json(200, {"status": "ok", "bundle_id": a.bundle_id, "name": a.manifest.name,
                              "version": a.manifest.version, "variant": a.variant,
                              "mode": self.api.mode(), **self.api.health()})

    def _model(self) -> None:
        a = self.api.agent
        self._send_json(200, {"bundle_id": a.bundle_id, "variant": a.variant,
                              "variants": [v.name for v in a.manifest.all_variants],
                              "inputs": [s.to_dict() for s in a.inputs],
                              "outputs": [s.to_dict() for s in a.outputs]})

    def _mode(self) -> None:
        self._send_json(200, {"mode": self.api.mode()})

    def _metrics_json(self) -> None:
        self._send_json(200, {**self.api.agent.stats(), "mode": self.api.mode()})

    def _metrics_prometheus(self) -> None:
        text = prometheus_text(self.api.agent.stats(), self.api.mode())
        self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    # --- plumbing -------------------------------------------------------------------------

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise _HttpError(411, "Content-Length is required")
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise _HttpError(400, f"bad Content-Length {length!r}") from None
        if n < 0 or n > self.api.max_body_bytes:
            self.close_connection = True  # the unread body would poison a kept-alive connection
            raise _HttpError(413, f"body of {n} bytes exceeds the {self.api.max_body_bytes} byte limit")
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _HttpError(400, f"body is not valid JSON: {exc}") from None

    def _send_error(self, status: int, reason: str) -> None:
        self._send_json(status, {"error": reason})

    def _send_json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _parse_inputs(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise _HttpError(400, 'body must be a JSON object {"inputs": {name: nested list}}')
    extra = sorted(set(body) - {"inputs"})
    if extra:
        raise _HttpError(400, f"unknown field(s) {', '.join(extra)} (allowed: inputs)")
    return body["inputs"]


def _jsonable(a: np.ndarray) -> Any:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return _replace_nonfinite(a.tolist())
    return a.tolist()


def _replace_nonfinite(x: Any) -> Any:
    if isinstance(x, list):
        return [_replace_nonfinite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def prometheus_text(stats: dict[str, Any], mode: str) -> str:
    labels = (f'bundle_id="{stats["bundle_id"]}",version="{_esc(stats["version"])}",'
              f'variant="{_esc(stats["variant"])}",mode="{_esc(mode)}"')
    lines = ["# HELP edgekit_agent_info The bundle and mode that run now.",
             "# TYPE edgekit_agent_info gauge", f"edgekit_agent_info{{{labels}}} 1"]
    for name, kind, help_, value in (
            ("edgekit_inferences_total", "counter", "Inferences completed.", stats["count"]),
            ("edgekit_inference_errors_total", "counter", "Inferences the runtime failed.", stats["errors"]),
            ("edgekit_inference_rejected_total", "counter", "Requests with invalid inputs.",
             stats["rejected"]),
            ("edgekit_busy_seconds_total", "counter", "Seconds spent inferring.", stats["busy_s"]),
            ("edgekit_inferences_per_second", "gauge", "Recent inference rate.", stats["inferences_per_s"])):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
    lines += ["# HELP edgekit_inference_latency_seconds Latency over the recent window.",
              "# TYPE edgekit_inference_latency_seconds summary"]
    for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        ms = stats["latency_ms"][key]
        lines.append(f'edgekit_inference_latency_seconds{{quantile="{q}"}} '
                     f'{_num(None if ms is None else ms / 1e3)}')
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    return "NaN" if value is None else repr(float(value))


def _esc(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
