"""`edgekit flash --firmware IMAGE --to serial://…` for ESP32 boards (esptool's Python API).

Without a board: the plan esptool is given is checked, and a pty with nobody behind it (esptool
really tries to sync with the ROM over it) must give a one-line error within the timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from edgekit.errors import FlashError
from edgekit.flash import esp


def _image(path, chip_id: int, size: int = 4096):
    """An ESP app image header (magic, segments, flash mode/size, entry, extended header)."""
    head = bytes([0xE9, 1, 2, 0x20]) + (0x40370000).to_bytes(4, "little")
    ext = bytes([0xEE, 0, 0, 0]) + chip_id.to_bytes(2, "little") + bytes(10)
    path.write_bytes(head + ext + bytes(size - len(head) - len(ext)))
    return path


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "flash", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def test_plan_reads_the_chip_from_the_image_and_checks_the_board(tmp_path):
    plan = esp.plan_firmware(_image(tmp_path / "fw.bin", 9), "/dev/ttyACM0", baud=921600,
                             timeout_s=2.0, board="esp32-s3")
    assert plan.image.chip == "esp32s3" and plan.image.chip_name == "ESP32-S3"
    assert plan.image.size_bytes == 4096 and plan.address == 0x0 and plan.baud == 921600
    assert plan.connect_attempts == 3  # ceil(2.0 s / 0.8 s per unanswered attempt)
    assert plan.to_dict()["image"]["chip"] == "esp32s3"
    with pytest.raises(FlashError, match="built for ESP32; the bundle's board esp32-s3 is esp32s3"):
        esp.plan_firmware(_image(tmp_path / "old.bin", 0), "/dev/ttyACM0", baud=921600, timeout_s=1,
                          board="esp32-s3")
    with pytest.raises(FlashError, match="not an ESP32 board"):
        esp.plan_firmware(tmp_path / "fw.bin", "/dev/ttyACM0", baud=921600, timeout_s=1, board="stm32h7")
    with pytest.raises(FlashError, match="multiple of 0x1000"):
        esp.plan_firmware(tmp_path / "fw.bin", "/dev/ttyACM0", baud=921600, timeout_s=1, address=0x10)


def test_not_an_esp_image_is_refused(tmp_path, cli_error):
    (tmp_path / "fw.bin").write_bytes(b"\x7fELF" + bytes(100))
    cli_error(_cli("--firmware", tmp_path / "fw.bin", "--to", "serial:///dev/null"), "not an ESP firmware image")
    cli_error(_cli("--firmware", _image(tmp_path / "ok.bin", 9), "--to", "ssh://h/s"), "serial://")
    cli_error(_cli("--to", "serial:///dev/null"), "give a BUNDLE")


def test_no_chip_on_a_pty_is_a_clear_error_within_the_timeout(tmp_path, cli_error):
    master, slave = os.openpty()
    try:
        t0 = time.monotonic()
        proc = _cli("--firmware", _image(tmp_path / "fw.bin", 9), "--to",
                    f"serial://{os.ttyname(slave)}?baud=460800", "--timeout", "1")
        elapsed = time.monotonic() - t0
        sent = _drain(master)
    finally:
        os.close(master)
        os.close(slave)
    cli_error(proc, "no ESP chip answered", "No serial data received")
    assert elapsed < 8, elapsed
    assert sent.count(b"\xc0") >= 2  # esptool really sent SLIP-framed SYNC requests
    assert b"\x07\x07\x12\x20" in sent  # the ROM SYNC pattern


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except (BlockingIOError, OSError):
        pass
    return b"".join(chunks)
