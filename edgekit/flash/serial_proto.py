"""Wire format of the edgekit MCU update protocol, host side.

The device side is C (firmware_targets/common/include/ek_update.h documents every message);
this module mirrors it: COBS framing with a 0x00 delimiter, CRC-32 (zlib) per frame,
little-endian fields. Nothing here touches a port.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

HELLO, BEGIN, DATA, END = 0x01, 0x02, 0x03, 0x04
INFO, READY, ACK, NAK, DONE, ERR = 0x81, 0x82, 0x83, 0x84, 0x85, 0x86

STATES = ("empty", "receiving", "pending", "trial", "confirmed", "reverted")
NO_SLOT = 0xFF

E_BOARD, E_SIZE, E_FLASH, E_HASH, E_SESSION, E_ACTIVE, E_BUSY, E_MALFORMED = range(1, 9)
ERRORS = {
    E_BOARD: "the image is for another board (refused before any write)",
    E_SIZE: "the image is empty or larger than a model slot",
    E_FLASH: "a flash erase/write/read failed on the device",
    E_HASH: "the received image does not match its sha256",
    E_SESSION: "the device has no transfer open (it restarted?)",
    E_ACTIVE: "this image is already the active model",
    E_BUSY: "a trial model is running unconfirmed; reboot the device to revert it first",
    E_MALFORMED: "the device rejected a malformed message",
}

FLAG_NO_CONFIRM = 0x01  # test hooks of the simulator's self-test, see ek_update.h
FLAG_FAIL_TEST = 0x02

MAX_FRAME = 4096  # longer runs without a delimiter are noise, not frames


def cobs_encode(data: bytes) -> bytes:
    out = bytearray()
    for run in data.split(b"\0"):
        while len(run) >= 254:
            out.append(0xFF)
            out += run[:254]
            run = run[254:]
        out.append(len(run) + 1)
        out += run
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        block = data[i + 1:i + code]
        if code == 0 or len(block) != code - 1 or 0 in block:
            raise ValueError("bad COBS block")
        out += block
        i += code
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(msg_type: int, body: bytes = b"") -> bytes:
    payload = bytes([msg_type]) + body
    return cobs_encode(payload + struct.pack("<I", zlib.crc32(payload))) + b"\0"


def decode_frame(encoded: bytes) -> tuple[int, bytes] | None:
    """(type, body) of one delimiter-less frame, or None when it is damaged."""
    try:
        raw = cobs_decode(encoded)
    except ValueError:
        return None
    if len(raw) < 5 or struct.unpack("<I", raw[-4:])[0] != zlib.crc32(raw[:-4]):
        return None
    return raw[0], raw[1:-4]


class FrameReader:
    """Bytes in any split, frames out; noise is counted, never raised."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_frames = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        *complete, rest = bytes(self._buf).split(b"\0")
        self._buf = bytearray(rest if len(rest) <= MAX_FRAME else b"")
        frames = []
        for enc in complete:
            if not enc:
                continue
            frame = decode_frame(enc) if len(enc) <= MAX_FRAME else None
            if frame is None:
                self.bad_frames += 1
            else:
                frames.append(frame)
        return frames


# --- messages ------------------------------------------------------------------------------

def hello(nonce: int) -> bytes:
    return encode_frame(HELLO, struct.pack("<H", nonce))


def begin(size: int, sha256: bytes, board: str, flags: int = 0) -> bytes:
    name = board.encode()
    return encode_frame(BEGIN, struct.pack("<I", size) + sha256 + bytes([flags, len(name)]) + name)


def data(offset: int, chunk: bytes) -> bytes:
    return encode_frame(DATA, struct.pack("<I", offset) + chunk)


def end() -> bytes:
    return encode_frame(END)


def parse_ack(body: bytes) -> tuple[int, int] | None:
    """(lwm, map) of an ACK/NAK body, None when malformed."""
    return struct.unpack("<II", body) if len(body) == 8 else None


@dataclass(frozen=True)
class SlotInfo:
    state: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "size": self.size, "sha256": self.sha256}


_INFO_HEAD = struct.Struct("<HBHBIBBI")
_SLOT = struct.Struct("<BI32s")


@dataclass(frozen=True)
class DeviceInfo:
    """What the device says about itself in reply to HELLO."""

    nonce: int
    version: int
    chunk: int
    window: int
    slot_size: int
    active: int | None
    running: int | None
    progress: int
    slots: tuple[SlotInfo, SlotInfo]
    board: str

    @classmethod
    def from_body(cls, body: bytes) -> DeviceInfo | None:
        fixed = _INFO_HEAD.size + 2 * _SLOT.size
        if len(body) < fixed + 1 or len(body) != fixed + 1 + body[fixed]:
            return None
        nonce, version, chunk, window, slot_size, active, running, progress = _INFO_HEAD.unpack_from(body)
        slots = []
        for i in range(2):
            state, size, sha = _SLOT.unpack_from(body, _INFO_HEAD.size + i * _SLOT.size)
            slots.append(SlotInfo(STATES[state] if state < len(STATES) else f"unknown-{state}",
                                  size, sha.hex()))
        if chunk == 0 or window == 0:
            return None
        return cls(nonce=nonce, version=version, chunk=chunk, window=window, slot_size=slot_size,
                   active=None if active == NO_SLOT else active,
                   running=None if running == NO_SLOT else running, progress=progress,
                   slots=(slots[0], slots[1]),
                   board=body[fixed + 1:].decode("utf-8", "replace"))

    @property
    def active_sha256(self) -> str | None:
        return self.slots[self.active].sha256 if self.active in (0, 1) else None

    @property
    def previous_sha256(self) -> str | None:
        """The other slot, when it still holds a confirmed model (the rollback image)."""
        if self.active not in (0, 1):
            return None
        other = self.slots[1 - self.active]
        return other.sha256 if other.state == "confirmed" else None

    def partial(self) -> tuple[str, int] | None:
        """(sha256, bytes kept) of an interrupted transfer the device can resume."""
        for slot in self.slots:
            if slot.state == "receiving":
                return slot.sha256, self.progress
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "version": self.version, "chunk": self.chunk,
                "window": self.window, "slot_size": self.slot_size, "active": self.active,
                "running": self.running, "progress": self.progress,
                "slots": [s.to_dict() for s in self.slots]}
