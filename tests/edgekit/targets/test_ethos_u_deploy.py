"""An Ethos-U bundle is deployable: it carries the firmware's C sources of the Vela model (op
resolver with AddEthosU, measured arena) and the int8 model Vela compiled, which a host runs for
the self-test. Every figure is checked against the real tools: Vela, TFLM, LiteRT, gcc."""

from __future__ import annotations

import io
import re
import subprocess

import numpy as np
import pytest

import edgekit
import edgekit.examples
from edgekit.targets.ethos_u import run_vela
from edgekit.targets.ethos_u_firmware import offline_plan_bytes
from edgekit.targets.mcu import measure_arena
from edgekit.tflite.model import op_names
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.errors import ModelError
from edgekit_agent.runtime import load_backend
from edgekit_agent.runtime.loader import load_runner


@pytest.fixture(scope="module")
def packed(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("ethos") / "digits-u55.ekb"
    ex = edgekit.examples.get_example("digits")
    edgekit.pack(str(digits.tflite), "ethos-u55-128", out, calib=ex.calib, eval_data=ex.eval,
                 labels=ex.labels)
    return open_bundle(out)


def test_host_form_is_the_network_vela_compiled(packed):
    rep = packed.manifest.primary.target_report
    assert rep.selftest_model == "model.selftest.tflite"
    host = packed.read(rep.selftest_model)
    assert packed.manifest.member(rep.selftest_model).role == "selftest"
    assert "CUSTOM:ethos-u" not in op_names(host) and "CONV_2D" in op_names(host)
    vela = rep.details["vela"]
    again, _, _ = run_vela(host, "ethos-u55-128", vela["system_config"], vela["memory_mode"])
    assert again == packed.read_model()  # Vela is deterministic: same input, same bytes


def test_selftest_vectors_are_the_host_forms_outputs(packed):
    v, runner = load_runner(packed, host_form=True)
    with np.load(io.BytesIO(packed.read("selftest.npz"))) as npz:
        x, want = npz["input_0"], npz["output_0"]
    got = np.concatenate([runner([x[k:k + 1]])[0] for k in range(len(x))])
    assert got.shape == want.shape == (4, 10)
    assert np.array_equal(got, want)
    fid = v.fidelity
    assert fid.samples == 500 and fid.accuracy >= 0.95 and fid.accuracy_drop <= 0.01
    assert fid.min_sqnr_db > 10 and fid.top1_agreement >= 0.98
    with pytest.raises(ModelError, match="unresolved custom op: ethos-u"):  # the shipped model needs the NPU
        load_runner(packed)


def test_arena_is_vela_plan_plus_measured_tflm_overhead(packed):
    rep = packed.manifest.primary.target_report
    d = rep.details
    assert d["arena_scratch_bytes"] == offline_plan_bytes(packed.read_model()) == rep.sram_bytes
    assert d["arena_basis"] == "Vela offline plan + TFLM persistent bytes of the host form"
    host = measure_arena(packed.read(rep.selftest_model))
    assert d["arena_persistent_bytes"] == host.recorded_tail_bytes > 0
    assert d["host_arena_bytes"] == host.with_margin(16)
    need = d["arena_scratch_bytes"] + d["arena_persistent_bytes"]
    assert need < rep.arena_bytes <= need + 2 * 16 and rep.arena_bytes % 16 == 0


def test_firmware_sources_hold_the_vela_model_and_compile_for_cortex_m55(packed, tmp_path):
    rep = packed.manifest.primary.target_report
    for name in ("model_data.c", "model_data.h", "op_resolver.h", "op_resolver.cc"):
        (tmp_path / name).write_bytes(packed.read(f"mcu/{name}"))
    header = (tmp_path / "model_data.h").read_text()
    assert f"#define EDGEKIT_TENSOR_ARENA_SIZE {rep.arena_bytes}u" in header
    assert "#define EDGEKIT_OP_COUNT 1u" in header
    assert "TF_LITE_ENSURE_STATUS(resolver.AddEthosU());" in (tmp_path / "op_resolver.cc").read_text()
    body = (tmp_path / "model_data.c").read_text()
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    assert data == packed.read_model()
    spec = load_backend(packed.read(rep.selftest_model), "tflite").inputs[0]
    assert f"#define EDGEKIT_INPUT0_ZERO_POINT ({spec.zero_point})" in header
    obj = tmp_path / "model_data.o"
    proc = subprocess.run(["arm-none-eabi-gcc", "-std=c11", "-Os", "-mcpu=cortex-m55", "-mthumb",
                           "-Wall", "-Wextra", "-Werror", "-c", str(tmp_path / "model_data.c"),
                           "-o", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    size = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True)
    text = int(size.stdout.splitlines()[1].split()[0])
    assert len(packed.read_model()) <= text <= len(packed.read_model()) + 64
