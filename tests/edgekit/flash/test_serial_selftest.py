"""serial:// runs the bundle's own self-test vectors on this host before anything is sent: on
the host form (the int8 model Vela compiled) for an Ethos-U bundle, under TFLM for an MCU one."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest

import edgekit
from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit.flash.mcu_sim import dump_active
from edgekit.flash.serial import flash_serial
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.errors import FlashError


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """{target: bundle path}: digits packed by the real packer for an Ethos-U and an MCU target."""
    out = tmp_path_factory.mktemp("packed")
    return {t: edgekit.pack("example:digits.tflite", t, out / f"{t}.ekb").bundle
            for t in ("ethos-u55-128", "stm32h7")}


def _with_wrong_vectors(src, out):
    b = open_bundle(src)
    files = []
    for m in b.manifest.members:
        data = b.read(m.path)
        if m.path == "selftest.npz":
            with np.load(io.BytesIO(data)) as npz:
                arrays = {k: npz[k] + (1.0 if k.startswith("output_") else 0) for k in npz.files}
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            data = buf.getvalue()
        files.append(MemberFile(m.path, data, m.role))
    return write_bundle(out, b.manifest.replace(created=""), files)


@pytest.mark.parametrize("target", ["ethos-u55-128", "stm32h7"])
def test_bundle_is_self_tested_here_then_committed_on_the_device(start_sim, packed, target):
    bundle = open_bundle(packed[target])
    sim = start_sim(board=target)
    out = flash_serial(packed[target], sim.path)
    check = out["host_selftest"]
    assert check["kind"] == "vectors" and check["vectors"] == 4
    with np.load(io.BytesIO(bundle.read("selftest.npz"))) as npz:
        assert 0.0 <= check["max_abs_error"] <= float(npz["atol"])
    assert out["state"] == "confirmed"
    assert hashlib.sha256(dump_active(sim.flash)).hexdigest() == bundle.manifest.model.sha256
    if target == "ethos-u55-128":  # what travels is Vela's model, not the host form
        assert bundle.read_model() != bundle.read("model.selftest.tflite")


def test_bundle_failing_its_self_test_is_refused_before_the_port_is_opened(start_sim, packed,
                                                                           tmp_path):
    bad = _with_wrong_vectors(packed["ethos-u55-128"], tmp_path / "bad.ekb")
    sim = start_sim(board="ethos-u55-128")
    with pytest.raises(FlashError) as err:
        flash_serial(bad, sim.path)
    msg = str(err.value)
    assert msg.startswith("bad.ekb: self-test failed on this host, nothing was sent: ")
    assert "differs by up to 1" in msg and "\n" not in msg
    sim.stop()
    assert dump_active(sim.flash) is None  # nothing was written
