"""serial://: send a bundle's model to a microcontroller running the edgekit update protocol.

The host streams the image in chunks over a sliding window (selective repeat: the device keeps
out-of-order chunks and reports a 32-chunk map with every ACK), retransmits what the ACKs show
missing, and probes with the oldest missing chunk when the line goes quiet. The device checks
the board before it writes anything, verifies the sha256 itself, then reboots into the new slot
on trial and confirms it after its self-test (MCUboot's test-then-confirm). An interrupted
transfer resumes from the device's own (sha256, offset) record.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.errors import EdgekitError, FlashError, SerialLinkError, first_line
from edgekit_agent.store.selftest import SELFTEST_EXTRA, run_selftest

from . import serial_proto as sp

MCU_FAMILIES = ("mcu", "ethos-u")
HANDSHAKE_S = 2.0       # a device answers HELLO in milliseconds; anything else is not ours
CONFIRM_WAIT_S = 5.0    # reboot + self-test on a real board (model load, one inference)
FRAME_OVERHEAD = 16     # type, offset, CRC, COBS code bytes and delimiter around a chunk

Progress = Callable[[int, int], None]


@dataclass
class TransferStats:
    bytes_sent: int = 0
    frames_sent: int = 0
    retransmits: int = 0
    naks: int = 0
    probes: int = 0
    bad_frames: int = 0


@dataclass(frozen=True)
class TransferResult:
    board: str
    state: str                  # confirmed | trial | reverted | already-active
    slot: int | None
    resumed_from: int
    payload_bytes: int
    seconds: float
    active_sha256: str | None
    previous_sha256: str | None
    stats: TransferStats = field(default_factory=TransferStats)

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "state": self.state, "slot": self.slot,
                "resumed_from": self.resumed_from, "payload_bytes": self.payload_bytes,
                "seconds": round(self.seconds, 4), "active_sha256": self.active_sha256,
                "previous_sha256": self.previous_sha256, "bytes_sent": self.stats.bytes_sent,
                "frames_sent": self.stats.frames_sent, "retransmits": self.stats.retransmits,
                "naks": self.stats.naks, "probes": self.stats.probes,
                "bad_frames": self.stats.bad_frames}


def flash_serial(bundle_path: Path, device: str, *, baud: int = 921600, key: Path | None = None,
                 progress: Progress | None = None, timeout_s: float = 10.0) -> dict:
    """Flash the bundle's MCU model to the device on ``device`` (a tty path, a pty or any pyserial
    URL). Returns {"uri", "board", "bytes_sent", "payload_bytes", "seconds", "resumed_from",
    "active_sha256", "state", ...}; raises FlashError / SerialLinkError."""
    bundle = open_bundle(bundle_path, public_key=key)
    manifest = bundle.manifest
    if manifest.family not in MCU_FAMILIES:
        raise FlashError(f"{Path(bundle_path).name} is a {manifest.family!r} bundle for "
                         f"{manifest.target}; serial:// takes {' or '.join(MCU_FAMILIES)} bundles")
    host_check = _host_selftest(bundle, Path(bundle_path).name)
    image = bundle.read_model()
    with open_port(device, baud, timeout_s) as port:
        result = send_image(port, image, manifest.target, baud=baud, progress=progress,
                            timeout_s=timeout_s, where=device)
    if result.state not in ("confirmed", "already-active"):
        raise FlashError(_unconfirmed_message(device, result.state))
    out = result.to_dict()
    out["uri"] = f"serial://{device}?baud={baud}"
    out["active"] = _bundle_ref(manifest, result.active_sha256)
    out["previous"] = _bundle_ref(manifest, result.previous_sha256)
    if host_check is not None:
        out["host_selftest"] = host_check
    return out


def _host_selftest(bundle: Any, name: str) -> dict[str, Any] | None:
    """The bundle's own self-test vectors, run here before anything is sent (on the host form
    of an Ethos-U model, under TFLM for an MCU one): a bundle that fails them never reaches the
    device. None when the bundle ships no vectors."""
    if not bundle.manifest.extras.get(SELFTEST_EXTRA):
        return None
    try:
        return run_selftest(bundle).to_dict()
    except EdgekitError as exc:
        raise FlashError(f"{name}: self-test failed on this host, nothing was sent: "
                         f"{first_line(exc)}") from None


def _unconfirmed_message(device: str, state: str) -> str:
    if state == "reverted":
        return (f"the device on {device} failed its self-test on the new model "
                "and reverted to the previous one")
    return (f"the device on {device} did not confirm the new model within {CONFIRM_WAIT_S:g} s "
            f"(state {state}); it reverts to the previous model on its next boot")


def _bundle_ref(manifest: Any, sha256: str | None) -> dict[str, str] | None:
    """The device stores only the model's sha256; name/version are known when it is ours."""
    if sha256 is None:
        return None
    ours = sha256 == manifest.model.sha256
    return {"name": manifest.name if ours else "", "version": manifest.version if ours else "",
            "id": sha256}


def device_info(device: str, *, baud: int = 921600, timeout_s: float = HANDSHAKE_S) -> sp.DeviceInfo:
    """Ask the device on ``device`` what it holds (board, slots, states, resumable transfer)."""
    with open_port(device, baud, timeout_s) as port:
        link = _Link(port, device, TransferStats())
        link.send(b"\0")
        return handshake(link, timeout_s)


def open_port(device: str, baud: int, timeout_s: float) -> Any:
    import serial

    try:
        port = serial.serial_for_url(device, baudrate=baud, timeout=0.05,
                                     write_timeout=max(timeout_s, 1.0))
    except (serial.SerialException, OSError, ValueError) as exc:
        raise SerialLinkError(f"cannot open serial device {device}: {first_line(exc)}") from None
    try:
        port.reset_input_buffer()  # stale bytes from an earlier session are not replies to us
    except (serial.SerialException, OSError):
        pass
    return port


class _Link:
    """Frames over a pyserial port, with every library error mapped to SerialLinkError."""

    def __init__(self, port: Any, where: str, stats: TransferStats) -> None:
        self.port, self.where, self.stats = port, where, stats
        self.reader = sp.FrameReader()
        self.pending: list[tuple[int, bytes]] = []
        self.last_heard = time.monotonic()

    def send(self, frame: bytes) -> None:
        import serial

        try:
            self.port.write(frame)
        except (serial.SerialException, OSError) as exc:
            raise SerialLinkError(f"writing to {self.where} failed: {first_line(exc)}") from None
        self.stats.bytes_sent += len(frame)
        self.stats.frames_sent += 1

    def recv(self, timeout: float) -> tuple[int, bytes] | None:
        import serial

        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self.port.timeout = min(remaining, 0.05)
                chunk = self.port.read(max(1, self.port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise SerialLinkError(f"reading from {self.where} failed: {first_line(exc)}") from None
            if chunk:
                self.pending += self.reader.feed(chunk)
                self.stats.bad_frames = self.reader.bad_frames
        self.last_heard = time.monotonic()
        return self.pending.pop(0)

    def request(self, frame: bytes, want: tuple[int, ...], total_s: float, every_s: float,
                accept: Callable[[int, bytes], bool] = lambda t, b: True) -> tuple[int, bytes] | None:
        """Send ``frame`` every ``every_s`` until a reply of a wanted type arrives."""
        deadline = time.monotonic() + total_s
        while time.monotonic() < deadline:
            self.send(frame)
            resend_at = min(deadline, time.monotonic() + every_s)
            while (left := resend_at - time.monotonic()) > 0:
                reply = self.recv(left)
                if reply and reply[0] in want and accept(*reply):
                    return reply
        return None


def send_image(port: Any, image: bytes, board: str, *, baud: int = 921600, flags: int = 0,
               progress: Progress | None = None, timeout_s: float = 10.0, where: str = "the device",
               check_board: bool = True, confirm_wait_s: float = CONFIRM_WAIT_S) -> TransferResult:
    """The whole exchange on an open port: handshake, BEGIN, windowed DATA, END, confirm wait.

    ``flags`` are the simulator's self-test hooks (serial_proto.FLAG_*); ``check_board=False``
    leaves the board check to the device alone (to test that it refuses)."""
    t0 = time.monotonic()
    stats = TransferStats()
    link = _Link(port, where, stats)
    link.send(b"\0")  # ends whatever partial frame noise left in the device's buffer
    info = handshake(link, min(timeout_s, HANDSHAKE_S))
    if check_board and info.board != board:
        raise FlashError(f"the device on {where} is a {info.board!r} board; the bundle is for {board!r}")
    sha = hashlib.sha256(image).digest()
    if info.active_sha256 == sha.hex():
        return _result(info, "already-active", info.active, 0, image, t0, stats)
    start, slot = _begin(link, info, image, sha, board, flags, timeout_s)
    if progress:
        progress(start, len(image))
    window = _Window(link, image, info.chunk, info.window, start, baud, timeout_s, progress)
    window.run()
    _end(link, window, timeout_s)
    final = _wait_confirmed(link, slot, sha.hex(), timeout_s, confirm_wait_s)
    state = final.slots[slot].state if final.active != slot else "confirmed"
    return _result(final, state, slot, start, image, t0, stats)


def handshake(link: _Link, wait_s: float) -> sp.DeviceInfo:
    nonce = int.from_bytes(os.urandom(2), "little")
    infos: list[sp.DeviceInfo] = []

    def ours(_t: int, body: bytes) -> bool:
        info = sp.DeviceInfo.from_body(body)
        if info is not None and info.nonce == nonce:
            infos.append(info)
        return bool(infos)

    if link.request(sp.hello(nonce), (sp.INFO,), wait_s, 0.2, ours) is None:
        raise SerialLinkError(f"no edgekit device answered on {link.where} within {wait_s:g} s "
                              "(is it running the edgekit update firmware, at this baud rate?)")
    info = infos[-1]
    if info.version != 1:
        raise FlashError(f"the device on {link.where} speaks update protocol v{info.version}; "
                         "this edgekit speaks v1")
    return info


def _begin(link: _Link, info: sp.DeviceInfo, image: bytes, sha: bytes, board: str, flags: int,
           timeout_s: float) -> tuple[int, int]:
    if len(image) > info.slot_size:
        raise FlashError(f"the model is {len(image)} bytes; the device's model slot holds {info.slot_size}")
    reply = link.request(sp.begin(len(image), sha, board, flags), (sp.READY, sp.ERR), timeout_s, 0.3)
    if reply is None:
        raise SerialLinkError(f"the device on {link.where} stopped answering (no reply to BEGIN)")
    if reply[0] == sp.ERR:
        raise FlashError(f"the device on {link.where} refused the image: {_err_text(reply[1])}")
    if len(reply[1]) != 5:
        raise SerialLinkError(f"the device on {link.where} sent a malformed READY")
    start, slot = int.from_bytes(reply[1][:4], "little"), reply[1][4]
    if start > len(image) or start % info.chunk or slot not in (0, 1):
        raise SerialLinkError(f"the device on {link.where} proposed an impossible resume point {start}")
    return start, slot


def _err_text(body: bytes) -> str:
    code = body[0] if body else 0
    return sp.ERRORS.get(code, f"error code {code}")


class _Window:
    """Selective-repeat sender: keeps up to ``window`` chunks ahead of the device's lwm."""

    def __init__(self, link: _Link, image: bytes, chunk: int, window: int, start: int, baud: int,
                 timeout_s: float, progress: Progress | None) -> None:
        self.link, self.image, self.chunk, self.window = link, image, chunk, min(window, 32)
        self.n = -(-len(image) // chunk)
        self.lwm = start // chunk                # first chunk the device lacks
        self.next_new = self.lwm
        self.acked = bytearray(self.n + 33)
        self.order = [0] * self.n                # transmission counter of each chunk's last send
        self.first = [0] * self.n                # ... and of its first send
        self.counter = 0
        self.max_acked_order = 0
        self.resend: list[int] = []
        self.frame_s = (chunk + FRAME_OVERHEAD) * 10 / baud
        self.timeout_s, self.progress = timeout_s, progress

    def run(self) -> None:
        probe_wait = self._probe_base()
        last_ack = time.monotonic()
        while self.lwm < self.n:
            self._fill()
            frame = self.link.recv(self.frame_s if self.next_new < self.n and not self.resend
                                   else probe_wait / 4)
            now = time.monotonic()
            if frame is not None and frame[0] in (sp.ACK, sp.NAK):
                if self._on_ack(frame):
                    probe_wait, last_ack = self._probe_base(), now
                continue
            if frame is not None and frame[0] == sp.ERR:
                raise FlashError(f"the device on {self.link.where} aborted the transfer: "
                                 f"{_err_text(frame[1])}")
            if now - self.link.last_heard > self.timeout_s:
                raise SerialLinkError(f"the device on {self.link.where} stopped answering at "
                                      f"{self.lwm * self.chunk} of {len(self.image)} bytes; "
                                      "run the flash again to resume")
            if now - last_ack > probe_wait and not self.resend:
                self._probe()
                probe_wait, last_ack = min(probe_wait * 2, 1.0), now

    def finish(self, ack: tuple[int, bytes]) -> None:
        """The device answered END with an ACK: resend every chunk it still lacks."""
        self._on_ack(ack)
        self.resend.extend(c for c in range(self.lwm, self.n) if not self.acked[c])
        self.run()

    def _probe_base(self) -> float:
        return 4 * self.frame_s + 0.03

    def _fill(self) -> None:
        limit = min(self.n, self.lwm + self.window)
        while self.resend:
            c = self.resend.pop(0)
            if c < limit and not self.acked[c]:
                self._send(c)
                self.link.stats.retransmits += 1
        while self.next_new < limit:
            self._send(self.next_new)
            self.next_new += 1

    def _send(self, c: int) -> None:
        off = c * self.chunk
        self.counter += 1
        self.order[c] = self.counter
        self.first[c] = self.first[c] or self.counter
        self.link.send(sp.data(off, self.image[off:off + self.chunk]))

    def _on_ack(self, frame: tuple[int, bytes]) -> bool:
        parsed = sp.parse_ack(frame[1])
        if frame[0] == sp.NAK:
            self.link.stats.naks += 1
        if parsed is None:
            return False
        lwm_bytes, bitmap = parsed
        new_lwm = min(-(-lwm_bytes // self.chunk), self.n)
        moved = new_lwm > self.lwm
        for c in range(self.lwm, max(new_lwm, self.lwm)):
            self._mark(c)
        self.lwm = max(self.lwm, new_lwm)
        for i in range(1, 32):
            if bitmap >> i & 1 and new_lwm + i < self.n:
                moved |= self._mark(new_lwm + i)
        self._find_losses()
        if moved and self.progress:
            self.progress(min(self.lwm * self.chunk, len(self.image)), len(self.image))
        return moved

    def _mark(self, c: int) -> bool:
        if self.acked[c]:
            return False
        self.acked[c] = 1
        # Which of c's transmissions arrived is unknown (Karn): only what was sent before the
        # first one is surely overtaken.
        self.max_acked_order = max(self.max_acked_order, self.first[c])
        return True

    def _find_losses(self) -> None:
        """A serial line keeps order: a chunk sent before one the device holds, and not held
        itself, was lost or damaged."""
        for c in range(self.lwm, self.next_new):
            if not self.acked[c] and self.order[c] < self.max_acked_order and c not in self.resend:
                self.resend.append(c)

    def _probe(self) -> None:
        """Quiet line with chunks outstanding: the tail was lost, or an ACK was."""
        for c in range(self.lwm, self.next_new):
            if not self.acked[c]:
                self.resend.append(c)
                self.link.stats.probes += 1
                return


def _end(link: _Link, window: _Window, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = link.request(sp.end(), (sp.DONE, sp.ERR, sp.ACK), deadline - time.monotonic(), 0.5)
        if reply is None:
            break
        if reply[0] == sp.DONE:
            return
        if reply[0] == sp.ERR and reply[1][:1] == bytes([sp.E_SESSION]):
            return  # our first END was taken and its DONE lost: the device is already rebooting
        if reply[0] == sp.ERR:
            raise FlashError(f"the device on {link.where} did not accept the image: {_err_text(reply[1])}")
        window.finish(reply)  # END before the device held everything: send what it lacks
    raise SerialLinkError(f"the device on {link.where} stopped answering after the last chunk")


def _wait_confirmed(link: _Link, slot: int, sha: str, timeout_s: float,
                    confirm_wait_s: float) -> sp.DeviceInfo:
    """After DONE the device reboots into the slot on trial; poll until it confirms or reverts,
    or until ``confirm_wait_s`` has passed with the slot still on trial."""
    t0 = time.monotonic()
    last: sp.DeviceInfo | None = None
    while time.monotonic() - t0 < max(timeout_s, confirm_wait_s):
        try:
            last = handshake(link, 1.0)
        except SerialLinkError:
            continue  # still rebooting
        state = last.slots[slot]
        if state.sha256 != sha:
            raise FlashError(f"the device on {link.where} no longer holds the image in slot {slot}")
        if state.state in ("receiving", "empty"):
            raise FlashError(f"the device on {link.where} did not verify the image (slot {slot} is "
                             f"{state.state}); run the flash again")
        if state.state in ("confirmed", "reverted"):
            return last
        if state.state == "trial" and time.monotonic() - t0 >= confirm_wait_s:
            return last
        time.sleep(0.05)
    if last is None:
        raise SerialLinkError(f"the device on {link.where} did not come back after the update")
    return last


def _result(info: sp.DeviceInfo, state: str, slot: int | None, start: int, image: bytes, t0: float,
            stats: TransferStats) -> TransferResult:
    return TransferResult(board=info.board, state=state, slot=slot, resumed_from=start,
                          payload_bytes=len(image), seconds=time.monotonic() - t0,
                          active_sha256=info.active_sha256, previous_sha256=info.previous_sha256,
                          stats=stats)
