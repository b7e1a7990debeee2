"""Firmware images onto ESP32 boards through esptool's Python API (optional extra ``esp``).

esptool does what it is trusted for (ROM sync, the flasher stub, compressed writes, MD5 check
after writing); edgekit checks beforehand what esptool would only find out on the wire: the file
is an ESP image, for the chip the board has (the image header names it), and afterwards that the
chip that answered is that chip — before any write. esptool's own console output is collected
(its last line explains a failure) and its progress feeds our bar.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import FlashError

ESP_IMAGE_MAGIC = 0xE9
CHIP_ID_OFFSET = 12          # uint16 in the extended image header (ESP32 and later)
HEADER_BYTES = 24
ROM_BAUD = 115200            # the ROM bootloader syncs at this rate; the stub then switches
CONNECT_ATTEMPT_S = 0.8      # one esptool connect attempt without an answer, measured on a pty
DEFAULT_ADDRESS = 0x0        # a merged image (`idf.py merge-bin`, PlatformIO's firmware + bootloader)
INSTALL_HINT = "pip install -e '.[esp]' (esptool)"
# board profile (firmware_targets/*.toml) -> esptool chip name
BOARD_CHIPS = {"esp32-s3": "esp32s3"}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FirmwareImage:
    path: str
    size_bytes: int
    chip: str                # esptool's key, e.g. "esp32s3"
    chip_name: str           # esptool's CHIP_NAME, e.g. "ESP32-S3"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EsptoolPlan:
    """Everything esptool will be asked to do, decided before a port is opened."""

    port: str
    image: FirmwareImage
    address: int
    baud: int
    connect_attempts: int
    connect_mode: str = "default-reset"
    after: str = "hard-reset"
    compress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image": self.image.to_dict()}


def _esptool() -> tuple[Any, Any, Any]:
    try:
        from esptool import cmds
        from esptool.targets import CHIP_DEFS
        from esptool.util import FatalError
    except ImportError:
        raise FlashError(f"esptool is not installed: {INSTALL_HINT}") from None
    return cmds, CHIP_DEFS, FatalError


def read_image(path: Path) -> FirmwareImage:
    """Check the ESP image header and read the chip it was built for."""
    _, chip_defs, _ = _esptool()
    try:
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as exc:
        raise FlashError(f"cannot read firmware {path}: {exc.strerror or exc}") from None
    if len(head) < HEADER_BYTES or head[0] != ESP_IMAGE_MAGIC:
        raise FlashError(f"{path} is not an ESP firmware image (no 0x{ESP_IMAGE_MAGIC:02X} header; "
                         "give the .bin that idf.py / PlatformIO built)")
    chip_id = int.from_bytes(head[CHIP_ID_OFFSET:CHIP_ID_OFFSET + 2], "little")
    for key, cls in chip_defs.items():
        if getattr(cls, "IMAGE_CHIP_ID", None) == chip_id:
            return FirmwareImage(str(path), size, key, cls.CHIP_NAME)
    raise FlashError(f"{path}: the image header names chip id {chip_id}, which this esptool "
                     "does not know")


def plan_firmware(image: Path, port: str, *, baud: int, timeout_s: float,
                  address: int = DEFAULT_ADDRESS, board: str | None = None) -> EsptoolPlan:
    fw = read_image(image)
    expected = BOARD_CHIPS.get(board) if board else None
    if board and expected is None:
        raise FlashError(f"{board} is not an ESP32 board (esptool boards: {', '.join(BOARD_CHIPS)})")
    if expected and fw.chip != expected:
        raise FlashError(f"{image} is built for {fw.chip_name}; the bundle's board {board} is "
                         f"{expected}")
    if address < 0 or address % 0x1000:
        raise FlashError(f"firmware address {address:#x} must be a multiple of 0x1000")
    attempts = max(1, math.ceil(timeout_s / CONNECT_ATTEMPT_S))
    return EsptoolPlan(port=port, image=fw, address=address, baud=baud, connect_attempts=attempts)


def flash_firmware(plan: EsptoolPlan, progress: Progress | None = None) -> dict[str, Any]:
    cmds, _, fatal = _esptool()
    data = Path(plan.image.path).read_bytes()
    mode = plan.connect_mode if _has_modem_lines(plan.port) else "no-reset"
    with _quiet_esptool(len(data), progress) as log:
        try:
            esp = cmds.detect_chip(plan.port, ROM_BAUD, mode, connect_attempts=plan.connect_attempts)
        except (fatal, OSError) as exc:
            raise FlashError(f"{plan.port}: no ESP chip answered within {plan.connect_attempts} "
                             f"connect attempt(s): {_first_line(exc)}") from None
        with esp:
            if esp.CHIP_NAME != plan.image.chip_name:
                raise FlashError(f"{plan.port} has an {esp.CHIP_NAME}; {plan.image.path} is for "
                                 f"{plan.image.chip_name}; nothing written")
            try:
                esp = cmds.run_stub(esp)
                cmds.attach_flash(esp)
                if plan.baud != ROM_BAUD:
                    esp.change_baud(plan.baud)
                cmds.write_flash(esp, [(plan.address, data)], compress=plan.compress)
                cmds.reset_chip(esp, plan.after)
            except (fatal, OSError) as exc:
                raise FlashError(f"{plan.port}: esptool failed: {_first_line(exc)} "
                                 f"(last output: {log.last})") from None
    return {"port": plan.port, "chip": plan.image.chip_name, "address": plan.address,
            "bytes": len(data)}


def _has_modem_lines(port: str) -> bool:
    """Whether DTR/RTS can be driven (USB-UART bridges: yes; a pty or some USB-CDC ports: no).
    Without them esptool cannot reset the chip into its ROM loader, and says so on the console."""
    import serial

    try:
        with serial.Serial(port, ROM_BAUD, timeout=0) as line:
            line.dtr = line.dtr
    except serial.SerialException as exc:
        raise FlashError(f"cannot open {port}: {_first_line(exc)}") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            return False
        raise FlashError(f"cannot open {port}: {exc.strerror or exc}") from None
    return True


class _Collector:
    """An esptool TemplateLogger: keeps the text, turns its progress into our callback."""

    def __init__(self, size: int, progress: Progress | None) -> None:
        self.size, self.progress, self.last = size, progress, ""

    def print(self, *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(a) for a in args).strip()
        if text:
            self.last = text.splitlines()[-1][:200]

    def note(self, message: str) -> None:
        self.print(message)

    def warning(self, message: str) -> None:
        self.print(message)

    def error(self, message: str) -> None:
        self.print(message)

    def stage(self, finish: bool = False) -> None:
        pass

    def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                     bar_length: int = 30) -> None:
        if self.progress and total_iters:
            self.progress(min(self.size, self.size * cur_iter // total_iters), self.size)

    def set_verbosity(self, verbosity: str) -> None:
        pass


@contextmanager
def _quiet_esptool(size: int, progress: Progress | None) -> Iterator[_Collector]:
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    template = type("EdgekitEsptoolLog", (_Collector, TemplateLogger), {})
    collector = template(size, progress)
    saved = EspLog.instance
    log.set_logger(collector)
    try:
        yield collector
    finally:
        EspLog.instance = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
