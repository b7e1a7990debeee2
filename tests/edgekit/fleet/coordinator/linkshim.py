"""A TCP shim that gives a loopback link a real bandwidth and delay: every byte a client and the
broker exchange through it is paced by a token bucket (``rate_bps``, each direction) and held
for ``delay_ms`` one way. The rate can change while connections are open."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque

PIECE = 4096


class LinkShim:
    def __init__(self, target: tuple[str, int], rate_bps: float, delay_ms: float = 1.0) -> None:
        self.target, self.rate_bps, self.delay_s = target, rate_bps, delay_ms / 1e3
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                _Pipe(self, src, dst).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass


class _Pipe:
    """One direction: a reader stamps chunks with their arrival, a writer paces them out."""

    def __init__(self, shim: LinkShim, src: socket.socket, dst: socket.socket) -> None:
        self.shim, self.src, self.dst = shim, src, dst
        self.chunks: deque[tuple[float, bytes]] = deque()
        self.ready = threading.Condition()
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(65536)
            except OSError:
                data = b""
            with self.ready:
                if not data:
                    self.closed = True
                else:
                    self.chunks.append((time.monotonic() + self.shim.delay_s, data))
                self.ready.notify()
            if not data:
                return

    def _write(self) -> None:
        free_at = time.monotonic()  # when the token bucket lets the next byte go
        while True:
            with self.ready:
                while not self.chunks and not self.closed:
                    self.ready.wait()
                if not self.chunks:
                    self.dst.close()
                    return
                due, data = self.chunks.popleft()
            for i in range(0, len(data), PIECE):
                piece = data[i:i + PIECE]
                now = time.monotonic()
                free_at = max(free_at, due, now - 0.002)  # a link idle for a while has no credit
                if free_at > now:
                    time.sleep(free_at - now)
                try:
                    self.dst.sendall(piece)
                except OSError:
                    return
                free_at += len(piece) * 8.0 / self.shim.rate_bps
