"""Drive the host-built MCU (firmware_targets/common, `make sim`) from Python.

Used by the tests and tools/bench/serial_throughput.py, and by anyone who wants to try
`edgekit flash ... --to serial://PTY` without a board:

    with McuSim(flash_file, board="stm32h7") as dev:
        flash_serial(bundle, dev.path)
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import edgekit.firmware_targets as _firmware
from edgekit_agent.errors import FlashError

COMMON_DIR = Path(_firmware.__path__[0]) / "common"
SIM_BINARY = COMMON_DIR / "build" / "edgekit-mcu-sim"


def build_sim() -> Path:
    """`make -C firmware_targets/common sim` (a no-op when up to date)."""
    proc = subprocess.run(["make", "-s", "-C", str(COMMON_DIR), "sim"], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not SIM_BINARY.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlashError(f"building the MCU simulator failed: {last}")
    return SIM_BINARY


class McuSim:
    """One run of edgekit-mcu-sim: ``path`` is its pty; kill() is a power cut."""

    def __init__(self, flash: Path, board: str, *, slot_kib: int | None = None,
                 binary: Path = SIM_BINARY) -> None:
        self.flash, self.board, self.binary = Path(flash), board, binary
        self.slot_kib = slot_kib
        self.proc: subprocess.Popen | None = None
        self.path = ""
        self.log_path = self.flash.with_name(self.flash.name + ".log")

    def start(self) -> McuSim:
        args = [str(self.binary), "--flash", str(self.flash), "--board", self.board]
        if self.slot_kib:
            args += ["--slot-kib", str(self.slot_kib)]
        with open(self.log_path, "ab") as log:  # a file, not a pipe: nobody has to drain it
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("/dev/"):
            self.stop()
            last = (self.log().strip().splitlines() or [line or "no output"])[-1]
            raise FlashError(f"edgekit-mcu-sim did not start: {last}")
        self.path = line
        return self

    def kill(self) -> None:
        """Power cut: SIGKILL, no chance to finish anything."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def log(self) -> str:
        """Everything the sims on this flash file wrote to stderr (boot and self-test lines)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> McuSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dump_active(flash: Path, binary: Path = SIM_BINARY) -> bytes | None:
    """The active model in a flash image, None when there is none (`--dump-active` exit 1)."""
    proc = subprocess.run([str(binary), "--flash", str(flash), "--dump-active"], capture_output=True,
                          stdin=subprocess.DEVNULL)
    return proc.stdout if proc.returncode == 0 else None
