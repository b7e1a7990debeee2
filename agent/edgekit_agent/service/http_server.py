"""The HTTP API's connection handling: deadlines, a connection cap, one write per response.

The stdlib server gives every connection a thread that blocks in ``recv`` for as long as the
peer likes, so a few hundred half-open sockets used to hold every thread and descriptor. Here:

- **Deadlines, not idle timeouts.** The request line and headers must arrive within
  ``header_timeout_s`` of the connection becoming idle (accepted, or its previous response
  sent), the body within ``body_timeout_s`` of the headers. A peer trickling a byte a second
  does not reset the clock. Past the header deadline the connection is closed; past the body
  deadline it gets 408.
- **A connection cap with eviction.** At most ``max_connections`` are served at once. A new
  connection beyond the cap evicts the connection that has been *idle* (waiting for a request)
  longest, so half-open sockets cannot lock out a real client; when every connection is busy
  with a request the newcomer gets 503 and is closed.
- **Bounded headers**: request line + headers over ``MAX_HEADER_BYTES`` get 431.
- **JSON for every status**, including the stdlib's own 400/414/431/501/505 answers.
- **One write per response** (status line, headers and body together) and ``TCP_NODELAY``:
  two writes met Nagle's algorithm and the client's delayed ACK, a 40 ms floor per request.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("edgekit_agent.http")
MAX_HEADER_BYTES = 32 << 10  # request line + headers (plus at most one read-ahead buffer)
REFUSED_KEPT = 256  # refused sockets waiting to be closed


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 128


class _HeaderTooLarge(Exception):
    pass


class _Connection:
    """One accepted socket: idle (waiting for a request) or busy, and since when."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.idle, self.since, self.evicted = sock, True, time.monotonic(), False

    def set_idle(self, idle: bool) -> None:
        self.idle, self.since = idle, time.monotonic()

    def evict(self) -> None:
        self.evicted = True
        try:  # wakes the handler thread blocked in recv with EOF; it then exits
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail with TimeoutError once ``deadline`` (monotonic) has passed."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock, self.deadline = sock, time.monotonic() + 3600.0
        self.header_budget: int | None = None  # bytes left while reading headers

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        if self.header_budget is not None and self.header_budget <= 0:
            raise _HeaderTooLarge()
        self.sock.settimeout(left)
        n = self.sock.recv_into(buffer)
        if self.header_budget is not None:
            self.header_budget -= n
        return n


class GuardedServer(ThreadingHTTPServer):
    """A threading HTTP server that admits connections under :class:`ConnectionLimits`."""

    daemon_threads = True
    request_queue_size = 1024  # the listen backlog; the kernel caps it at net.core.somaxconn

    def __init__(self, address: tuple[str, int], handler: type[GuardedHandler],
                 limits: ConnectionLimits) -> None:
        self.limits = limits
        self._connections: dict[socket.socket, _Connection] = {}
        self._lock = threading.Lock()
        self.evicted = self.refused = 0
        self._closing: list[tuple[float, socket.socket]] = []  # refused, closed a moment later
        # Reused threads: starting one per connection made 2,000 half-open sockets cost 0.5 s.
        self._pool = ThreadPoolExecutor(limits.max_connections, thread_name_prefix="edgekit-http")
        super().__init__(address, handler)

    def connection(self, sock: socket.socket) -> _Connection:
        with self._lock:
            return self._connections[sock]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(not c.evicted for c in self._connections.values())

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._admit(request):
            self._refuse(request)
            return
        self._pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        with self._lock:
            for conn in self._connections.values():
                conn.evict()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _admit(self, sock: socket.socket) -> bool:
        with self._lock:
            live = [c for c in self._connections.values() if not c.evicted]
            if len(live) >= self.limits.max_connections:
                idle = [c for c in live if c.idle]
                if not idle:
                    return False
                min(idle, key=lambda c: c.since).evict()
                self.evicted += 1
            self._connections[sock] = _Connection(sock)
            return True

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def _refuse(self, sock: socket.socket) -> None:
        """503 without a thread; the socket is closed on a later tick, after the peer's request
        has arrived and been drained (closing with unread data sends a reset that can destroy
        the answer before the peer reads it)."""
        self.refused += 1
        body = json.dumps({"error": "too many connections"}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
        try:
            sock.setblocking(False)  # the accept loop must never wait on a peer
            sock.send(head.encode() + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._closing.append((time.monotonic(), sock))
        if len(self._closing) > REFUSED_KEPT:
            _drain_and_close(self._closing.pop(0)[1])

    def service_actions(self) -> None:  # called by serve_forever every poll interval
        now = time.monotonic()
        while self._closing and now - self._closing[0][0] > 0.5:
            _drain_and_close(self._closing.pop(0)[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer that vanished mid-request is not news; handlers answer everything else


def _drain_and_close(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


class GuardedHandler(BaseHTTPRequestHandler):
    """Request handling under deadlines; subclasses answer with :meth:`respond` only."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: GuardedServer

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._conn = self.server.connection(self.connection)

    def handle(self) -> None:
        self.close_connection = True
        try:
            self._serve_one()
            while not self.close_connection and not self._conn.evicted:
                self._serve_one()
        except _HeaderTooLarge:
            self.send_error(431, "request line and headers exceed "
                            f"{MAX_HEADER_BYTES} bytes")
        except OSError:
            pass  # reset, evicted or gone: nothing to answer
        except Exception as exc:  # a bug behind a route: say so, keep serving others
            log.exception("HTTP request failed")
            self.send_error(500, f"internal error: {type(exc).__name__}")

    def _serve_one(self) -> None:
        self.request_version, self.requestline, self.command = "HTTP/1.1", "", ""  # for early refusals
        self._conn.set_idle(True)
        self._reader.deadline = time.monotonic() + self.server.limits.header_timeout_s
        self._reader.header_budget = MAX_HEADER_BYTES
        self.handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._reader.header_budget = None
        if ok and self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 is not supported")
            return False
        if ok:
            self._conn.set_idle(False)
            self._reader.deadline = time.monotonic() + self.server.limits.body_timeout_s
        return ok

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are counted in the metrics; the journal stays quiet

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own refusals (400, 414, 431, 501, 505, ...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the stdlib's guess for a bad line: no headers
            self.request_version = "HTTP/1.1"
        reason = message or self.responses.get(code, ("error",))[0]
        self.respond_json(code, {"error": reason})

    def respond_json(self, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.respond(status, json.dumps(obj, allow_nan=False).encode(), "application/json", headers)

    def respond(self, status: int, body: bytes, content_type: str,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]
        self.connection.settimeout(self.server.limits.body_timeout_s)  # a peer that never reads
        self.flush_headers()  # one write: see the module docstring
