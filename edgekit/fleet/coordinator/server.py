"""The coordinator's HTTP side (stdlib server, ``prometheus-client`` text):

    GET /              a small HTML table of the devices (the dashboard builds on the API)
    GET /api/devices   JSON list, one object per device (see ``registry.DeviceRecord``)
    GET /api/stats     routing and ingest counters, lag and overhead percentiles
                       (``?reset=1``: and start a new window for the percentiles)
    GET /metrics       Prometheus text: edgekit_devices_online, _total, ingest and offload counters

Metrics are produced when scraped, from the counters the ingest path already keeps: the hot
path pays nothing for them.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgekit_agent.errors import ConfigError, TransportError

from .service import Coordinator

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class FleetCollector:
    """A prometheus-client collector over a coordinator's registry and counters."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c, reg = self.coordinator, self.coordinator.registry
        yield GaugeMetricFamily("edgekit_devices_online", "Devices whose status is online.",
                                value=reg.online_count())
        yield GaugeMetricFamily("edgekit_devices_total", "Devices the registry knows.",
                                value=len(reg.devices))
        yield GaugeMetricFamily("edgekit_offload_workers", "Online devices serving offloaded work.",
                                value=len(reg.workers()))
        messages = CounterMetricFamily("edgekit_registry_messages", "Messages taken into the "
                                       "registry, by kind.", labels=["kind"])
        for kind, n in reg.counts.items():
            messages.add_metric([kind], n)
        yield messages
        stats = c.stats()
        offload = CounterMetricFamily("edgekit_offload", "Offload requests by outcome.",
                                      labels=["outcome"])
        for key in ("requests", "dispatched", "redispatched", "run_local", "completed",
                    "worker_errors", "duplicates", "rejected", "error_replies"):
            offload.add_metric([key], stats[key])
        yield offload
        rejected = CounterMetricFamily("edgekit_offload_rejected", "Refused offload payloads, by "
                                       "reason.", labels=["reason"])
        for reason, n in sorted(stats["rejected_by_reason"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily("edgekit_offload_pending", "Offloaded work not answered yet.",
                                value=stats["pending"])
        per_device = GaugeMetricFamily("edgekit_device_temperature_celsius", "Last reported "
                                       "temperature.", labels=["device"])
        for row in reg.rows()[:1000]:  # a scrape must stay small on a big fleet
            if isinstance(row["temperature_c"], (int, float)):
                per_device.add_metric([row["device"]], row["temperature_c"])
        yield per_device


class CoordinatorHttp:
    def __init__(self, coordinator: Coordinator, host: str, port: int) -> None:
        self.coordinator = coordinator
        self.metrics = CollectorRegistry(auto_describe=False)
        self.metrics.register(FleetCollector(coordinator))
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
        path = self.path.split("?", 1)[0]
        c = self.app.coordinator
        if path == "/api/devices":
            self._send(200, json.dumps(_api_rows(c)).encode(), "application/json")
        elif path == "/api/stats":
            body = {"coordinator": c.stats(),
                    "registry": {**c.registry.counts, **c.registry.lag(),
                                 "devices": len(c.registry.devices)}}
            if self.path.endswith("?reset=1"):  # start a new measurement window (benchmarks)
                c.registry.lag_ms.clear()
                c.overhead_ms.clear()
            self._send(200, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, generate_latest(self.app.metrics), PROMETHEUS_TEXT)
        elif path == "/":
            self._send(200, _page(_api_rows(c)).encode(), "text/html; charset=utf-8")
        else:
            self._send(404, json.dumps({"error": f"no such endpoint {path}"}).encode(),
                       "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _api_rows(c: Coordinator) -> list[dict[str, Any]]:
    return c.registry.rows()


COLUMNS = ("device", "online", "mode", "bundle", "temperature_c", "latency_ms_p50", "worker",
           "service_ms_p50", "queue_depth")


def _page(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c)))}</td>" for c in COLUMNS)
                   + "</tr>" for r in rows)
    return (f"<!doctype html><title>edgekit fleet</title><h1>edgekit fleet</h1>"
            f"<p>{sum(1 for r in rows if r['online'])} of {len(rows)} devices online</p>"
            f"<table><tr>{head}</tr>{body}</table>")
