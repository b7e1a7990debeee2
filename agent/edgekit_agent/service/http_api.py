"""The local HTTP endpoint (stdlib only), for other processes on the device.

    POST /v1/infer    {"inputs": {name: nested list}}  ->  {"outputs": {name: nested list}, ...}
    GET  /v1/health   liveness and the bundle that runs
    GET  /v1/model    input/output specs of the running variant
    GET  /v1/mode     {"mode": ...} from the callable the daemon passes in
    GET  /v1/metrics  Agent.stats() as JSON
    GET  /metrics     the same in Prometheus text format

Bound to 127.0.0.1 unless told otherwise; bound anywhere else it refuses to start without a
bearer token (``http.token_file``), and with a token every request needs
``Authorization: Bearer <token>`` (401 otherwise). Every refusal is a 4xx/5xx with
``{"error": reason}``. Bodies are strict JSON: no NaN/Infinity (nor numbers that overflow to
them), no duplicate keys, exactly one ``Content-Length``, no ``Transfer-Encoding``. Deadlines,
the connection cap and the one-write responses are :mod:`.http_server`'s.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import AgentConfig, is_loopback
from ..defaults import HTTP_HOST, HTTP_MAX_BODY_BYTES, HTTP_PORT
from ..errors import ConfigError, EdgekitError, TransportError
from .agent import Agent
from .http_server import ConnectionLimits, GuardedHandler, GuardedServer

DEFAULT_LIMITS = ConnectionLimits()
InferFn = Callable[[dict[str, Any]], dict[str, np.ndarray]]


class HttpApi:
    """``HttpApi(agent).start()`` serves in a background thread; ``stop()`` shuts it down.

    ``infer`` replaces ``agent.infer`` for POST /v1/infer (e.g. a rate-limited wrapper). An
    ``EdgekitError`` it raises is answered with the class's ``http_status`` (``InputError`` 400,
    ``RateLimited`` 503, ``RuntimeBackendError`` and the rest 500).
    """

    def __init__(self, agent: Agent, *, host: str = HTTP_HOST, port: int = HTTP_PORT,
                 mode: Callable[[], str] | None = None, max_body_bytes: int = HTTP_MAX_BODY_BYTES,
                 infer: InferFn | None = None, limits: ConnectionLimits = DEFAULT_LIMITS,
                 token: str | None = None,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        if token is None and not is_loopback(host):
            raise ConfigError("binding the HTTP API beyond loopback needs a bearer token "
                              "(set http.token_file)", key="http.host", value=host)
        self.agent = agent
        self.mode = mode or (lambda: "default")
        self.health = health or (lambda: {})  # the daemon adds its links' state
        self.max_body_bytes = max_body_bytes
        self.infer = infer or agent.infer
        self._token = None if token is None else token.encode()
        try:
            self._server = GuardedServer((host, port), _Handler, limits)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.api = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, agent: Agent, config: AgentConfig, *, mode: Callable[[], str] | None = None,
                    infer: InferFn | None = None,
                    health: Callable[[], dict[str, Any]] | None = None) -> HttpApi:
        h = config.http
        limits = ConnectionLimits(header_timeout_s=h.header_timeout_s,
                                  body_timeout_s=h.body_timeout_s, max_connections=h.max_connections)
        return cls(agent, host=h.host, port=h.port, mode=mode, max_body_bytes=h.max_body_bytes,
                   infer=infer, limits=limits, token=h.read_token(), health=health)

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token)

    @property
    def server(self) -> GuardedServer:
        return self._server

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
        if self._thread is not None:  # shutdown() waits for a serve_forever that never ran
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(GuardedHandler):
    server_version = "edgekit-agent"

    @property
    def api(self) -> HttpApi:
        return self.server.api  # type: ignore[attr-defined]

    def _authorized(self, body_unread: bool = False) -> bool:
        if self.api.authorized(self.headers.get("Authorization")):
            return True
        self.close_connection = self.close_connection or body_unread
        self.respond_json(401, {"error": "missing or wrong bearer token"},
                          (("WWW-Authenticate", 'Bearer realm="edgekit-agent"'),))
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if not self._authorized():
            return
        routes = {"/v1/health": self._health, "/v1/model": self._model, "/v1/mode": self._mode,
                  "/v1/metrics": self._metrics_json, "/metrics": self._metrics_prometheus}
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send_error(405 if self.path == "/v1/infer" else 404,
                             "use POST" if self.path == "/v1/infer" else f"no such endpoint {self.path}")
            return
        route()

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized(body_unread=True):
            return
        if self.path.split("?", 1)[0] != "/v1/infer":
            self.close_connection = True  # the body stays unread
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
                              "bundle_id": agent.bundle_id, "variant": agent.variant,
                              "served_by": getattr(outputs, "served_by", "local")})

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
        self.respond(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    # --- plumbing -------------------------------------------------------------------------

    def _read_json(self) -> Any:
        n = self._content_length()
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            self.close_connection = True
            raise _HttpError(408, f"body not received within {self.server.limits.body_timeout_s:g} s") from None
        if len(raw) < n:
            self.close_connection = True
            raise _HttpError(400, f"body ended after {len(raw)} of {n} bytes")
        return strict_json(raw)

    def _content_length(self) -> int:
        lengths = self.headers.get_all("Content-Length") or []
        keep, self.close_connection = self.close_connection, True  # until the body is known
        if self.headers.get("Transfer-Encoding") is not None:
            raise _HttpError(501, "Transfer-Encoding is not supported: send a Content-Length")
        if not lengths:
            raise _HttpError(411, "Content-Length is required")
        if len(lengths) > 1:
            raise _HttpError(400, f"{len(lengths)} Content-Length headers: exactly one is allowed")
        if not _LENGTH_RE.match(lengths[0]):
            raise _HttpError(400, f"bad Content-Length {lengths[0]!r}")
        n = int(lengths[0])
        if n > self.api.max_body_bytes:
            raise _HttpError(413, f"body of {n} bytes exceeds the {self.api.max_body_bytes} byte limit")
        self.close_connection = keep
        return n

    def _send_error(self, status: int, reason: str) -> None:
        self.respond_json(status, {"error": reason})

    def _send_json(self, status: int, obj: Any) -> None:
        self.respond_json(status, obj)


_LENGTH_RE = re.compile(r"^[0-9]{1,12}$")


def strict_json(raw: bytes) -> Any:
    """JSON as RFC 8259 has it: no NaN/Infinity, no number overflowing to inf, no duplicate keys."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except _HttpError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _HttpError(400, f"body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise _HttpError(400, f"body is not valid JSON: {name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _HttpError(400, f"body is not valid JSON: {text[:40]} overflows a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _HttpError(400, f"body is not valid JSON: duplicate key {key[:40]!r}")
        out[key] = value
    return out


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
