"""The simulated line itself: its byte rate is the nominal baud / 10, damage is as configured."""

from __future__ import annotations

import os
import select
import threading
import time
import tty

from edgekit.flash import serial_proto as sp
from edgekit.flash.line_sim import LineSim


def _device_pty():
    master, slave = os.openpty()
    tty.setraw(master), tty.setraw(slave)
    return master, slave


def _pump_through(line: LineSim, master: int, payload: bytes,
                  idle_s: float = 5.0) -> tuple[bytes, float]:
    """Write ``payload`` to the host end while a thread drains the device end (a reader that
    waits until the writer is done would stall the whole line, as on a real UART)."""
    got = bytearray()

    def read():
        deadline = time.monotonic() + 10
        while len(got) < len(payload) and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], idle_s)
            if not ready:
                return
            got.extend(os.read(master, 65536))

    host = os.open(line.path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(host)
    reader = threading.Thread(target=read)
    reader.start()
    t0 = time.monotonic()
    for i in range(0, len(payload), 1024):
        os.write(host, payload[i:i + 1024])
    reader.join()
    os.close(host)
    return bytes(got), time.monotonic() - t0


def test_rate_is_the_baud_over_ten_bits():
    master, slave = _device_pty()
    payload = os.urandom(46_080)  # 0.5 s at 921,600 baud
    with LineSim(os.ttyname(slave), baud=921600) as line:
        got, seconds = _pump_through(line, master, payload)
    os.close(master), os.close(slave)
    assert got == payload
    nominal = len(payload) / 92160
    assert nominal * 0.97 <= seconds <= nominal * 1.25, (seconds, nominal)


def test_damage_is_seeded_and_counted():
    master, slave = _device_pty()
    frames = b"".join(sp.data(i * 1024, os.urandom(1024)) for i in range(100))
    with LineSim(os.ttyname(slave), baud=4_000_000, corrupt=0.1, drop=0.1, seed=7) as line:
        got, _ = _pump_through(line, master, frames, idle_s=0.3)
        stats = line.to_device
    os.close(master), os.close(slave)
    reader = sp.FrameReader()
    intact = reader.feed(got)
    assert stats.frames == 100 and 0 < stats.dropped < 25 and 0 < stats.corrupted < 25
    assert len(intact) == 100 - stats.dropped - stats.corrupted
    assert reader.bad_frames >= stats.corrupted
