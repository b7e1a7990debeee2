"""edgekit-mcu-sim: the device side's guarantees, judged by its file-backed flash.

kill -9 of the sim is a power cut (its flash writes go straight to the file); a restart on the
same file is the next boot."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from edgekit.flash import serial_proto as sp
from edgekit.flash.mcu_sim import dump_active
from edgekit.flash.serial import device_info as _info
from edgekit_agent.errors import FlashError, SerialLinkError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_dump_active_exits_1_without_a_model(start_sim, sim_binary, tmp_path):
    sim = start_sim()
    proc = subprocess.run([str(sim_binary), "--flash", str(sim.flash), "--dump-active"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "error: no active model in the flash image"
    missing = subprocess.run([str(sim_binary), "--flash", str(tmp_path / "none.bin"), "--dump-active"],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.startswith("error: cannot open flash image")


def test_first_stdout_line_is_the_pty(start_sim):
    sim = start_sim()
    assert sim.path.startswith("/dev/pts/") and os.path.exists(sim.path)
    info = _info(sim.path)
    assert info.board == "stm32h7" and info.active is None and info.chunk == 1024


def test_power_cut_before_commit_keeps_old_model(start_sim, send, images):
    old, new = images
    sim = start_sim()
    assert send(sim.path, old).state == "confirmed"

    def cut_power(done: int, total: int) -> None:
        if done > total // 2:
            sim.kill()

    with pytest.raises(SerialLinkError):
        send(sim.path, new, progress=cut_power, timeout_s=0.5)
    assert sim.proc.returncode == -9
    assert dump_active(sim.flash) == old
    rebooted = start_sim(flash=sim.flash)
    info = _info(rebooted.path)
    assert info.active_sha256 == _sha(old) and info.running == info.active
    partial = info.partial()
    assert partial and partial[0] == _sha(new) and 0 < partial[1] < len(new)
    # ...and the interrupted image resumes from the device's record, then commits.
    done = send(rebooted.path, new)
    assert done.state == "confirmed" and done.resumed_from == partial[1]
    assert dump_active(sim.flash) == new and done.previous_sha256 == _sha(old)


def test_unconfirmed_trial_reverts_on_next_boot(start_sim, send, images):
    old, new = images
    sim = start_sim()
    send(sim.path, old)
    trial = send(sim.path, new, flags=sp.FLAG_NO_CONFIRM, confirm_wait_s=0.2)
    assert trial.state == "trial"
    info = _info(sim.path)
    assert info.running == trial.slot and info.slots[trial.slot].state == "trial"
    assert dump_active(sim.flash) == old  # a trial is not active until confirmed
    with pytest.raises(FlashError, match="trial model is running unconfirmed"):
        send(sim.path, images[1][::-1])  # no new transfer over a running trial
    sim.kill()
    rebooted = start_sim(flash=sim.flash)
    info = _info(rebooted.path)
    assert info.slots[trial.slot].state == "reverted" and info.active_sha256 == _sha(old)
    assert info.running == info.active
    assert dump_active(sim.flash) == old


def test_failed_self_test_reverts_at_once(start_sim, send, images):
    old, new = images
    sim = start_sim()
    send(sim.path, old)
    result = send(sim.path, new, flags=sp.FLAG_FAIL_TEST)
    assert result.state == "reverted" and result.active_sha256 == _sha(old)
    assert dump_active(sim.flash) == old
    assert "failed its self-test" in sim.log()


def test_wrong_board_refused_by_the_device_itself(start_sim, send, images):
    sim = start_sim(board="nrf52840")
    send(sim.path, images[0], board="nrf52840")
    before = sim.flash.read_bytes()
    with pytest.raises(FlashError, match="another board"):
        send(sim.path, images[1], board="stm32h7", check_board=False)  # host check skipped
    assert sim.flash.read_bytes() == before


def test_oversized_image_refused(start_sim, send):
    sim = start_sim()
    before = sim.flash.read_bytes()
    with pytest.raises(FlashError, match="slot holds"):
        send(sim.path, b"\x01" * (1024 * 1024 + 1))
    assert sim.flash.read_bytes() == before


def test_noise_never_crashes_the_device(start_sim, send, images):
    sim = start_sim()
    fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
    try:
        for i in range(200):
            os.write(fd, os.urandom(2000) if i % 2 else sp.data(0, os.urandom(1024))[:-1])
        os.write(fd, bytes(range(256)) * 8)
        time.sleep(0.2)
    finally:
        os.close(fd)
    assert sim.proc.poll() is None
    assert send(sim.path, images[0]).state == "confirmed"
    assert dump_active(sim.flash) == images[0]
