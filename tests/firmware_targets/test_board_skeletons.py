"""One firmware skeleton per MCU board the target files define, each wired to the shared glue:
its board file implements every function of ek_board.h under the board's own target name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgekit.targets.profiles import load_profiles

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware_targets"
BOARDS = sorted(name for name, p in load_profiles().items() if p.family == "mcu")


def _declared(header: Path) -> set[str]:
    return set(re.findall(r"^[\w ]+?\*?\s*\b(ek_board_\w+)\(", header.read_text(), re.MULTILINE))


def test_every_mcu_target_has_a_skeleton_and_nothing_else_does():
    assert BOARDS == ["esp32-s3", "nrf52840", "stm32h7"]
    skeletons = sorted(p.parent.name for p in FIRMWARE.glob("*/platformio.ini"))
    assert skeletons == BOARDS


@pytest.mark.parametrize("board", BOARDS)
def test_board_file_implements_the_board_interface(board):
    src = FIRMWARE / board / "src"
    board_c = (src / "board.c").read_text()
    wanted = _declared(FIRMWARE / "app" / "include" / "ek_board.h")
    assert len(wanted) == 7
    defined = set(re.findall(r"^[\w ]+?\*?\s*\b(ek_board_\w+)\([^;]*?\)\s*\{", board_c,
                             re.MULTILINE | re.DOTALL))
    assert defined == wanted
    assert f'const char *ek_board_name(void) {{ return "{board}"; }}' in board_c
    main_c = (src / "main.c").read_text()
    assert "ek_app_boot()" in main_c and "ek_app_poll();" in main_c
    assert "ek_model_run(" in main_c and '#include "model_data.h"' in main_c
    readme = (FIRMWARE / board / "README.md").read_text()
    assert f"--target {board}" in readme and "unzip -o" in readme and "mcu/*" in readme
