"""The board-independent firmware (firmware_targets/app/: flash-slot glue, UART ring, boot with
self-test then confirm) with the TFLM-free shim: linked for Cortex-M7 by arm-none-eabi-gcc, and
built for the host on a pty, where the real `edgekit flash serial://` drives it."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit.errors import FlashError
from edgekit.flash.serial import device_info, flash_serial
from edgekit.flash.uri import FlashOptions, flash
from edgekit.tflite.model import dense_model
from edgekit_agent.bundle.manifest import Manifest, ModelRef, TargetReport, Variant, sha256_hex

APP_DIR = Path(__file__).resolve().parents[2] / "firmware_targets" / "app"
HOST_APP = APP_DIR / "build" / "edgekit-app-host"


def mcu_bundle(out: Path, model: bytes, target: str = "stm32h7") -> Path:
    """An MCU bundle around any bytes: the glue's self-test decides whether they are a model."""
    ref = ModelRef(path="model.tflite", format="tflite", sha256=sha256_hex(model),
                   size_bytes=len(model))
    primary = Variant(name="int8", model=ref, inputs=(), outputs=(),
                      target_report=TargetReport(family="mcu", flash_bytes=len(model)))
    manifest = Manifest(name="m", version="1", target=target, family="mcu", primary=primary,
                        members=())
    return write_bundle(out, manifest, [MemberFile("model.tflite", model, "model")])


def _make(*args: str) -> str:
    proc = subprocess.run(["make", "-s", "-C", str(APP_DIR), *args], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def app_host() -> Path:
    _make("host")
    return HOST_APP


@pytest.fixture
def board(app_host):
    proc = subprocess.Popen([str(app_host), "--board", "stm32h7"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    assert path.startswith("/dev/pts/"), proc.stderr.read()
    yield path, proc
    proc.terminate()
    proc.wait(timeout=10)


def test_glue_and_protocol_link_for_cortex_m7():
    out = _make("arm")
    text, data, bss = map(int, re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+\w+\s+build/arm/ek_app"
                                         r"\.elf$", out, re.MULTILINE).groups())
    # protocol ~3.7 KiB + glue; RAM: the protocol's frame buffer and the 4 KiB receive ring
    assert 3500 < text + data <= 6 * 1024, out
    assert 4096 < bss <= 4096 + 1600, out


def test_new_model_is_self_tested_then_confirmed(board, tmp_path):
    path, proc = board
    model = dense_model(64, 32, seed=3)
    out = flash_serial(mcu_bundle(tmp_path / "a.ekb", model), path, timeout_s=10)
    assert out["state"] == "confirmed" and out["active_sha256"] == sha256_hex(model)
    info = device_info(path)
    assert info.board == "stm32h7"
    assert info.slots[info.active].sha256 == sha256_hex(model)


def test_image_that_fails_its_self_test_reverts_to_the_previous_model(board, tmp_path):
    path, proc = board
    good = dense_model(64, 32, seed=4)
    flash_serial(mcu_bundle(tmp_path / "good.ekb", good), path, timeout_s=10)
    not_tflite = os.urandom(20_000)  # right sha256, but the runtime cannot load it
    with pytest.raises(FlashError, match="failed its self-test on the new model and reverted"):
        flash_serial(mcu_bundle(tmp_path / "bad.ekb", not_tflite), path, timeout_s=10)
    info = device_info(path)
    assert info.slots[info.active].sha256 == sha256_hex(good)
    proc.terminate()
    log = proc.communicate(timeout=10)[1]
    assert re.search(r"self-tests 2, failed 1", log), log


def test_wrong_board_refused_by_the_glue(board, tmp_path):
    path, _ = board
    bundle = mcu_bundle(tmp_path / "nrf.ekb", dense_model(8, 4), "nrf52840")
    with pytest.raises(FlashError, match="nrf52840"):
        flash(bundle, f"serial://{path}", FlashOptions(timeout_s=5))
    assert device_info(path).active is None


def test_packed_bundle_ships_a_firmware_selftest_case(tmp_path):
    import edgekit
    from edgekit_agent.bundle.reader import open_bundle
    from edgekit_agent.runtime.runner import quantizer

    out = tmp_path / "digits-h7.ekb"
    edgekit.pack("example:digits.tflite", "stm32h7", out)
    bundle = open_bundle(out)
    for name in ("model_data.h", "selftest_data.h"):
        (tmp_path / name).write_bytes(bundle.read(f"mcu/{name}"))
    header = (tmp_path / "selftest_data.h").read_text()
    v = bundle.manifest.primary
    with np.load(io.BytesIO(bundle.read("selftest.npz"))) as npz:
        x, y, atol = npz["input_0"][:1], npz["output_0"][:1], float(npz["atol"])
    want_in = quantizer(v.inputs[0])(x).ravel().tolist()
    want_out = quantizer(v.outputs[0])(y).ravel().tolist()
    arrays = dict(re.findall(r"edgekit_selftest_(\w+)\[\d+\] = \{([^}]*)\}", header))
    assert [int(n) for n in arrays["input0"].split(",")] == want_in
    assert [int(n) for n in arrays["output0"].split(",")] == want_out
    steps = float(re.search(r"EDGEKIT_SELFTEST_TOLERANCE (\S+)", header).group(1))
    assert steps == np.ceil(atol / v.outputs[0].scale) >= 1
    main = tmp_path / "use.c"
    main.write_text('#include "selftest_data.h"\nint first(void) { return edgekit_selftest_input0[0]'
                    ' + edgekit_selftest_output0[EDGEKIT_OUTPUT0_ELEMENTS - 1]; }\n')
    proc = subprocess.run(["arm-none-eabi-gcc", "-std=c99", "-Wall", "-Wextra", "-Werror",
                           "-pedantic", "-Os", "-mcpu=cortex-m7", "-mthumb", "-c", str(main),
                           "-o", str(tmp_path / "use.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
