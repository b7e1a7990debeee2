"""A simulated serial cable: a relay between a new pty (the host end) and a device's pty.

A bare pty moves bytes as fast as memory, so a throughput figure measured on one means
nothing. This relay passes bytes at a set baud (10 bits a byte: start, 8 data, stop) through a
token bucket in each direction, holds only a small queue (so the host's writes block as on a
real UART), and can damage the line: with a seeded RNG it corrupts (one bit flipped) or drops
whole frames (0x00-delimited, as the protocol frames them), and can cut the line after a
number of host-to-device bytes. It lives in the package (not in tools/) because the tests, the
throughput bench and anyone checking their own firmware's timing use it; it needs no more
than the standard library.

    python -m edgekit.flash.line_sim /dev/pts/7 --baud 115200 --corrupt 0.05
"""

from __future__ import annotations

import argparse
import os
import random
import select
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass

BITS_PER_BYTE = 10
QUEUE_BYTES = 512   # bytes the relay holds per direction: a UART FIFO plus a USB buffer
BURST_BYTES = 64    # credit an idle line may bank
BATCH_BYTES = 64    # bytes handed on per wake-up (0.7 ms at 921,600 baud)


@dataclass
class Direction:
    """Counters of one direction of the line."""

    name: str
    bytes_in: int = 0
    bytes_out: int = 0
    frames: int = 0
    corrupted: int = 0
    dropped: int = 0


class LineSim:
    def __init__(self, device: str, *, baud: int = 921600, corrupt: float = 0.0, drop: float = 0.0,
                 seed: int = 0, cut_after: int | None = None, both_ways: bool = True) -> None:
        self.device, self.baud = device, baud
        self.corrupt, self.drop, self.both_ways = corrupt, drop, both_ways
        self.cut_after = cut_after
        self.rng = random.Random(seed)
        self.to_device, self.to_host = Direction("to_device"), Direction("to_host")
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fds: list[int] = []
        self.path = ""

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> LineSim:
        dev = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(dev, termios.TCSANOW)
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        # Holding the slave open keeps the master readable between host sessions.
        self._fds = [dev, master, slave]
        self.path = os.ttyname(slave)
        self._threads = [
            threading.Thread(target=self._pump, args=(master, dev, self.to_device, True), daemon=True),
            threading.Thread(target=self._pump, args=(dev, master, self.to_host, self.both_ways),
                             daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    def __enter__(self) -> LineSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, dict[str, int]]:
        return {d.name: {k: v for k, v in vars(d).items() if k != "name"}
                for d in (self.to_device, self.to_host)}

    # --- the wire --------------------------------------------------------------------------
    def _pump(self, src: int, dst: int, counters: Direction, faults: bool) -> None:
        rate = self.baud / BITS_PER_BYTE
        out = bytearray()        # bytes on their way down the wire
        frame = bytearray()      # an incomplete frame, held back only when faults are on
        damaging = faults and (self.corrupt > 0 or self.drop > 0)
        wire_t = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            # Wake when a batch is due, not per byte: a busy loop would eat the CPU it measures.
            wait = max(0.0, wire_t + min(len(out), BATCH_BYTES) / rate - now) if out else 0.05
            readable = [src] if len(out) < QUEUE_BYTES else []
            try:
                ready, _, _ = select.select(readable, [], [], min(wait, 0.05))
            except (OSError, ValueError):
                return
            if ready:
                data = self._read(src)
                counters.bytes_in += len(data)
                if not out:  # an idle line banks at most a small burst of credit
                    wire_t = max(wire_t, time.monotonic() - BURST_BYTES / rate)
                if damaging:
                    out += self._damage(frame, data, counters)
                else:
                    out += data
            if self.cut.is_set():
                out.clear()
                frame.clear()
                continue
            now = time.monotonic()
            n = min(len(out), int((now - wire_t) * rate))
            if counters is self.to_device and self.cut_after is not None:
                n = min(n, max(0, self.cut_after - counters.bytes_out))
                if n == 0 and out:
                    self.cut.set()
                    continue
            if n > 0:
                sent = self._write(dst, out[:n])
                del out[:sent]
                wire_t += sent / rate
                counters.bytes_out += sent

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:  # EIO: the far end closed; a cable with nobody on it
            time.sleep(0.01)
            return b""

    @staticmethod
    def _write(fd: int, data: bytes) -> int:
        try:
            return os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return len(data)  # nobody listening: the bytes are lost on the wire

    def _damage(self, frame: bytearray, data: bytes, counters: Direction) -> bytes:
        """Whole frames out, each maybe dropped or with one bit flipped."""
        passed = bytearray()
        frame += data
        while (end := frame.find(0)) >= 0:
            one = bytearray(frame[:end + 1])
            del frame[:end + 1]
            counters.frames += 1
            roll = self.rng.random()
            if roll < self.drop:
                counters.dropped += 1
                continue
            if roll < self.drop + self.corrupt and len(one) > 1:
                at = self.rng.randrange(len(one) - 1)
                one[at] ^= 1 << self.rng.randrange(8)
                counters.corrupted += 1
            passed += one
        if len(frame) > 4096:  # no delimiter in sight: noise, pass it on untouched
            passed += frame
            frame.clear()
        return bytes(passed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.flash.line_sim", description=__doc__.split("\n")[0])
    ap.add_argument("device", help="the device's pty or tty")
    ap.add_argument("--baud", type=int, default=921600)
    ap.add_argument("--corrupt", type=float, default=0.0, help="fraction of frames with a bit flipped")
    ap.add_argument("--drop", type=float, default=0.0, help="fraction of frames lost")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        line = LineSim(args.device, baud=args.baud, corrupt=args.corrupt, drop=args.drop,
                       seed=args.seed).start()
    except OSError as exc:
        print(f"error: cannot open {args.device}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(line.path, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        line.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
