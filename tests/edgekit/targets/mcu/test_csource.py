"""Generated C sources: compiled with the host gcc, linked into a program that checks them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.targets import get_profile
from edgekit.targets.mcu import McuFamily, tflm_op_set
from edgekit.targets.mcu.csource import generate_sources
from edgekit_agent.bundle.manifest import TensorSpec
from edgekit_agent.runtime import load_backend

CHECK_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include "model_data.h"

int main(void) {
  static const int in_shape[] = EDGEKIT_INPUT0_SHAPE;
  static const int out_shape[] = EDGEKIT_OUTPUT0_SHAPE;
  uint32_t hash = 0;
  unsigned i;
  for (i = 0; i < edgekit_model_data_len; ++i) hash = hash * 31u + edgekit_model_data[i];
  printf("len %u\n", edgekit_model_data_len);
  printf("hash %u\n", (unsigned)hash);
  printf("aligned %d\n", (int)((uintptr_t)edgekit_model_data % 16u == 0));
  printf("ident %c%c%c%c\n", edgekit_model_data[4], edgekit_model_data[5], edgekit_model_data[6],
         edgekit_model_data[7]);
  printf("last %u\n", edgekit_model_data[EDGEKIT_MODEL_DATA_LEN - 1]);
  printf("arena %u\n", EDGEKIT_TENSOR_ARENA_SIZE);
  printf("ops %u\n", EDGEKIT_OP_COUNT);
  printf("in_name %s\n", EDGEKIT_INPUT0_NAME);
  printf("in_shape");
  for (i = 0; i < EDGEKIT_INPUT0_DIMS; ++i) printf(" %d", in_shape[i]);
  printf("\nin_bytes %u %u\n", EDGEKIT_INPUT0_BYTES,
         (unsigned)(EDGEKIT_INPUT0_ELEMENTS * sizeof(EDGEKIT_INPUT0_CTYPE)));
  printf("in_q %d %.9g %d\n", EDGEKIT_INPUT0_QUANTIZED, (double)EDGEKIT_INPUT0_SCALE,
         EDGEKIT_INPUT0_ZERO_POINT);
  printf("out_name %s\n", EDGEKIT_OUTPUT0_NAME);
  printf("out_shape");
  for (i = 0; i < EDGEKIT_OUTPUT0_DIMS; ++i) printf(" %d", out_shape[i]);
  printf("\nout_q %d %.9g %d\n", EDGEKIT_OUTPUT0_QUANTIZED, (double)EDGEKIT_OUTPUT0_SCALE,
         EDGEKIT_OUTPUT0_ZERO_POINT);
  return 0;
}
"""


def java_hash(data: bytes) -> int:
    h = 0
    for b in data:
        h = (h * 31 + b) & 0xFFFFFFFF
    return h


def write_sources(files: dict[str, bytes], folder: Path) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(text)
    return folder / "mcu"


def gcc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def build_and_run(src: Path) -> dict[str, str]:
    (src / "check.c").write_text(CHECK_PROGRAM)
    gcc("gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "check.c", "model_data.c",
        "-o", "check", cwd=src)
    out = subprocess.run([str(src / "check")], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def compiled(digits_int8_trained):
    return McuFamily().compile(digits_int8_trained, "tflite", get_profile("esp32-s3"))


def test_model_source_compiles_with_gcc_werror(compiled, tmp_path):
    src = write_sources(compiled.extra_files, tmp_path)
    gcc("gcc", "-c", "-Wall", "-Werror", "model_data.c", "-o", "model_data.o", cwd=src)
    gcc("gcc", "-std=c11", "-c", "-Wall", "-Wextra", "-Werror", "-pedantic", "model_data.c",
        "-o", "strict.o", cwd=src)
    size = gcc("size", "-A", "strict.o", cwd=src).stdout
    rodata = int(re.search(r"^\.rodata\s+(\d+)", size, re.M).group(1))
    assert rodata >= len(compiled.model)  # the whole model is in read-only data


def test_linked_program_sees_the_model_and_its_figures(compiled, tmp_path):
    got = build_and_run(write_sources(compiled.extra_files, tmp_path))
    model, report = compiled.model, compiled.report
    spec_in, spec_out = (load_backend(model, "tflite").inputs[0],
                         load_backend(model, "tflite").outputs[0])
    assert got["len"] == str(len(model))
    assert got["hash"] == str(java_hash(model))
    assert got["aligned"] == "1"
    assert got["ident"] == "TFL3"
    assert got["last"] == str(model[-1])
    assert got["arena"] == str(report.arena_bytes)
    assert got["ops"] == "4"
    assert got["in_name"] == "image" and got["out_name"] == "logits"
    assert got["in_shape"].split() == ["1", "8", "8", "1"]
    assert got["out_shape"].split() == ["1", "10"]
    assert got["in_bytes"] == "64 64"
    q, scale, zp = got["in_q"].split()
    assert (
        q == "1"
        and np.float32(scale) == np.float32(spec_in.scale)
        and int(zp) == spec_in.zero_point
    )
    q, scale, zp = got["out_q"].split()
    assert (
        q == "1"
        and np.float32(scale) == np.float32(spec_out.scale)
        and int(zp) == spec_out.zero_point
    )


def test_header_is_valid_cpp(compiled, tmp_path):
    src = write_sources(compiled.extra_files, tmp_path)
    (src / "use.cc").write_text(
        '#include "model_data.h"\n'
        f"static_assert(EDGEKIT_MODEL_DATA_LEN == {len(compiled.model)}u, \"length\");\n"
        f"static_assert(EDGEKIT_TENSOR_ARENA_SIZE == {compiled.report.arena_bytes}u, \"arena\");\n"
        "alignas(16) static unsigned char arena[EDGEKIT_TENSOR_ARENA_SIZE];\n"
        "int main() { return edgekit_model_data[0] + arena[0]; }\n")
    gcc("g++", "-std=c++17", "-Wall", "-Werror", "use.cc", "model_data.c", "-o", "use", cwd=src)


def test_op_resolver_registers_exactly_the_models_ops(compiled):
    text = compiled.extra_files["mcu/op_resolver.cc"].decode()
    header = compiled.extra_files["mcu/op_resolver.h"].decode()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", text)
    assert calls == ["AddConv2D", "AddMaxPool2D", "AddReshape", "AddFullyConnected"]
    assert set(calls) <= set(tflm_op_set().builtin.values())
    assert "tflite::MicroMutableOpResolver<EDGEKIT_OP_COUNT>" in header
    count = re.search(r"#define EDGEKIT_OP_COUNT (\d+)u",
                      compiled.extra_files["mcu/model_data.h"].decode())
    assert int(count.group(1)) == len(calls) == compiled.report.details["resolver_ops"]


def test_awkward_tensor_names_are_escaped(compiled, tmp_path):
    odd_in = 'in"put\\x??=1'
    files = generate_sources(compiled.model, arena_bytes=1234,
                             inputs=[TensorSpec(odd_in, (1, 8, 8, 1), "float32")],
                             outputs=[TensorSpec("out/0 é", (1, 10), "int8", 0.5, -3)],
                             ops=["CONV_2D", "CONV_2D", "SOFTMAX"])
    got = build_and_run(write_sources(files, tmp_path))
    assert got["in_name"] == odd_in
    assert got["out_name"] == "out/0 é"
    assert got["in_q"] == "0 0 0"
    assert got["out_q"] == "1 0.5 -3"
    assert got["arena"] == "1234" and got["ops"] == "2"
