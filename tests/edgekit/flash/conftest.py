"""Fixtures for serial flashing: the host-built MCU (gcc, on a pty) and MCU bundles of ~200 KB.

The model is a real TFLite flatbuffer (one float FULLY_CONNECTED, 256 -> 200: 204,800 weight
bytes) built with the flatbuffer API, wrapped by the real bundle writer with an MCU manifest:
the serial path cares about the bytes, and packing a model this size would cost seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit.flash.mcu_sim import McuSim, build_sim
from edgekit.tflite import model as tm
from edgekit_agent.bundle.manifest import (
    Manifest,
    ModelRef,
    TargetReport,
    TensorSpec,
    Variant,
    sha256_hex,
)

BOARD = "stm32h7"


def fc_tflite(n_in: int, n_out: int, seed: int = 0) -> bytes:
    return tm.dense_model(n_in, n_out, seed=seed)


def mcu_bundle(out: Path, model: bytes, *, target: str = BOARD, family: str = "mcu",
               version: str = "1", sign_key: Path | None = None) -> Path:
    ref = ModelRef(path="model.tflite", format="tflite", sha256=sha256_hex(model), size_bytes=len(model))
    primary = Variant(name="fp32", model=ref, inputs=(TensorSpec("x", (1, 256), "float32"),),
                      outputs=(TensorSpec("y", (1, 200), "float32"),),
                      target_report=TargetReport(family=family, flash_bytes=len(model)))
    manifest = Manifest(name="fc", version=version, target=target, family=family, primary=primary,
                        members=())
    return write_bundle(out, manifest, [MemberFile("model.tflite", model, "model")], sign_key)


@pytest.fixture(scope="session")
def sim_binary() -> Path:
    return build_sim()


@pytest.fixture
def start_sim(tmp_path, sim_binary):
    """start_sim(board=BOARD, flash=tmp_path/'flash.bin') -> a running McuSim; stopped after."""
    sims: list[McuSim] = []

    def start(board: str = BOARD, flash: Path | None = None) -> McuSim:
        sim = McuSim(flash or tmp_path / "flash.bin", board, binary=sim_binary).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


@pytest.fixture(scope="session")
def make_fc_model():
    """make_fc_model(n_in, n_out, seed=0) -> bytes of a one-op float TFLite model."""
    return fc_tflite


@pytest.fixture(scope="session")
def make_mcu_bundle():
    """make_mcu_bundle(out, model, target=BOARD, family='mcu', version='1', sign_key=None)."""
    return mcu_bundle


@pytest.fixture(scope="session")
def model_200k() -> bytes:
    return fc_tflite(256, 200, seed=1)


@pytest.fixture(scope="session")
def bundle_200k(tmp_path_factory, model_200k, keypair) -> Path:
    return mcu_bundle(tmp_path_factory.mktemp("mcu") / "fc.ekb", model_200k, sign_key=keypair[0])
