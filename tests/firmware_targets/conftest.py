"""Fixtures for the C device side: the sim built with make, started on a pty per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgekit.flash.mcu_sim import COMMON_DIR, McuSim, build_sim
from edgekit.flash.serial import open_port, send_image


@pytest.fixture(scope="session")
def common_dir() -> Path:
    return COMMON_DIR


@pytest.fixture(scope="session")
def sim_binary() -> Path:
    return build_sim()


@pytest.fixture
def start_sim(tmp_path, sim_binary):
    """start_sim(board='stm32h7', flash=tmp_path/'flash.bin') -> a running McuSim."""
    sims: list[McuSim] = []

    def start(board: str = "stm32h7", flash: Path | None = None) -> McuSim:
        sim = McuSim(flash or tmp_path / "flash.bin", board, binary=sim_binary).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


@pytest.fixture
def send():
    """send(path, image, board='stm32h7', **send_image_kwargs) -> TransferResult."""

    def run(path: str, image: bytes, board: str = "stm32h7", **kw):
        with open_port(path, 921600, kw.get("timeout_s", 10.0)) as port:
            return send_image(port, image, board, where=path, **kw)

    return run


@pytest.fixture(scope="session")
def images() -> tuple[bytes, bytes]:
    """Two distinct ~150 KB images (the device does not care what the bytes mean)."""
    return os.urandom(150_001), os.urandom(149_999)
