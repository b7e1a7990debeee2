"""The coordinator's HTTP side (stdlib server, ``prometheus-client`` text):

    GET /              the live dashboard (static/index.html; its script polls the API below)
    GET /static/NAME   the dashboard's files, from a fixed list (uPlot is vendored there)
    GET /api/devices   JSON list, one object per device (see ``registry.DeviceRecord``)
    GET /api/history   {device: {ts, latency_ms_p50, temperature_c, battery_pct, mode}}: the
                       last points of each device (``?device=NAME``, repeatable: only those)
    GET /api/rollouts  the newest rollouts of the fleet (``--rollouts DIR``, see ``.rollouts``)
    GET /api/stats     routing and ingest counters, lag and overhead percentiles
                       (``?reset=1``: and start a new window for the percentiles)
    GET /metrics       Prometheus text (see ``.metrics``)

Metrics are produced when scraped, from the counters the ingest path already keeps: the hot
path pays one history append and one histogram bucket per telemetry message, nothing more.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest

from edgekit_agent.errors import ConfigError, TransportError

from .metrics import FleetCollector
from .rollouts import RolloutView
from .service import Coordinator

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
STATIC = Path(__file__).with_name("static")
# URL -> (file under static/, content type). Nothing else on disk is ever served.
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
         "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
         "/static/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
         "/static/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
         "/favicon.ico": ("favicon.svg", "image/svg+xml")}
# The page loads only its own files: injected markup could neither run script nor load images.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'"


class CoordinatorHttp:
    def __init__(self, coordinator: Coordinator, host: str, port: int,
                 rollouts: Path | None = None) -> None:
        self.coordinator = coordinator
        self.rollouts = RolloutView(rollouts, coordinator.registry.fleet)
        self.metrics = CollectorRegistry(auto_describe=False)
        self.metrics.register(FleetCollector(coordinator, self.rollouts))
        self.files = {url: ((STATIC / name).read_bytes(), kind) for url, (name, kind) in FILES.items()}
        try:
            self._server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise TransportError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self._server.app = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="coordinator-http",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> CoordinatorHttp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("must be HOST:PORT", key="--http", value=text)
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgekit-coordinator"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    @property
    def app(self) -> CoordinatorHttp:
        return self.server.app  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        c = self.app.coordinator
        if path in self.app.files:
            body, kind = self.app.files[path]
            self._send(200, body, kind)
        elif path == "/api/devices":
            self._json(c.registry.rows())
        elif path == "/api/history":
            self._json(c.registry.series(query.get("device")))
        elif path == "/api/rollouts":
            self._json(self.app.rollouts.summaries())
        elif path == "/api/stats":
            self._json(_stats(c, reset=query.get("reset") == ["1"]))
        elif path == "/metrics":
            self._send(200, generate_latest(self.app.metrics), PROMETHEUS_TEXT)
        else:
            self._send(404, json.dumps({"error": f"no such endpoint {path}"}).encode(),
                       "application/json")

    def _json(self, obj: Any) -> None:
        self._send(200, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _stats(c: Coordinator, reset: bool) -> dict[str, Any]:
    body = {"fleet": c.registry.fleet, "coordinator": c.stats(),
            "registry": {**c.registry.counts, **c.registry.lag(), "devices": len(c.registry.devices)}}
    if reset:  # start a new measurement window (benchmarks)
        c.registry.lag_ms.clear()
        c.overhead_ms.clear()
    return body
