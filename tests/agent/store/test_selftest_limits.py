"""Issue 10, finding 9: selftest.npz is read with bounds taken from the manifest.

The bomb: 3 GiB of zeros deflate to ~3 MB; numpy's own loader allocates and inflates all of it
(3.2 GB peak before). Now the ``.npy`` header is read from the zip member first, its shape and
dtype are held against the manifest's declared input/output specs, the member's size must be
exactly header + data, and the data is read with a cap: the install is refused at a peak RSS
of a plain agent process (measured in a child with ``ru_maxrss``; goal <= 200 MB).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import manifest_dict, manifest_for, write_raw

from edgekit_agent.store.slots import BundleStore

GIB = 1 << 30
PEAK_GOAL_MB = 200


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """A version 1.0 .npy header, as numpy writes it (padded to 64 bytes)."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape})
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


def npz(members: dict[str, tuple[bytes, int]]) -> bytes:
    """An .npz whose members are a header followed by ``zeros`` zero bytes (streamed)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, (header, zeros) in members.items():
            with zf.open(name, "w", force_zip64=True) as f:
                f.write(header)
                chunk = bytes(64 << 20)
                while zeros > 0:
                    f.write(chunk[:min(zeros, len(chunk))])
                    zeros -= len(chunk)
    return buf.getvalue()


def selftest_bundle(out: Path, model: bytes, vectors: bytes, key: Path) -> Path:
    files = [("model.tflite", model, "model"), ("selftest.npz", vectors, "selftest")]
    m = manifest_dict(manifest_for(model, "tflite"), files)
    m["extras"] = {"selftest": "selftest.npz"}
    return write_raw(out, m, files, key)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> bytes:
    """input_0 claims (and holds) 3 GiB of float32 zeros; output_0 is the declared (1, 10)."""
    n = 3 * GIB // 4
    return npz({"input_0.npy": (npy_header("<f4", (n,)), 4 * n),
                "output_0.npy": (npy_header("<f4", (1, 10)), 40)})


INSTALL_AND_MEASURE = """
import json, resource, sys
from edgekit_agent.errors import EdgekitError
from edgekit_agent.store.slots import BundleStore
try:
    BundleStore(sys.argv[1]).install(sys.argv[2], sys.argv[3])
    error = None
except EdgekitError as exc:
    error = str(exc)
print(json.dumps({"error": error, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _install_peak(store, bundle, key) -> dict:
    proc = subprocess.run([sys.executable, "-c", INSTALL_AND_MEASURE, str(store), str(bundle),
                           str(key)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_3gib_npz_bomb_is_refused_within_200mb(bomb, tmp_path, models, keypair, bundle_factory):
    assert len(bomb) < 8 << 20  # ~3 MB on disk
    b = selftest_bundle(tmp_path / "bomb.ekb", models["tflite"], bomb, keypair[0])
    result = _install_peak(tmp_path / "store", b, keypair[1])
    # The same install of a good bundle: what the interpreter and its runtime cost anyway
    # (190-205 MB here with LiteRT loaded); the bomb may add only a few MB to that.
    control = _install_peak(tmp_path / "control", bundle_factory(sign_key=keypair[0]), keypair[1])
    assert control["error"] is None, control
    print(f"npz bomb: {len(bomb)} bytes on disk, 3 GiB inflated; peak RSS {result['peak_mb']:.0f} MB")
    assert result["error"] and "self-test 'input_0.npy' declares shape (805306368,)" in result["error"]
    assert "\n" not in result["error"]
    assert result["peak_mb"] <= max(PEAK_GOAL_MB, control["peak_mb"] + 16), (result, control)


@pytest.mark.parametrize("members, message", [
    # the header says (1, 8, 8, 1) but the member holds 16 MiB: refused before reading it
    ({"input_0.npy": (npy_header("<f4", (1, 8, 8, 1)), GIB // 64)}, "its header says"),
    # the header claims more elements than the declared shapes allow
    ({"input_0.npy": (npy_header("<f8", (65, 1, 8, 8, 1)), 65 * 64 * 8)}, "declares shape"),
    ({"input_0.npy": (npy_header("|O", (1, 8, 8, 1)), 512)}, "expected numbers"),
    ({"input_0.npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4}  \n", 0)}, "not a readable .npz"),
    ({"input_0.npy": (b"not numpy at all", 0)}, "not a readable .npz"),
    ({"secret.npy": (npy_header("<f4", (1,)), 4)}, "is not one of input_<i>"),
    # 32 TiB claimed by a header over no data: numpy raised _ArrayMemoryError (a traceback)
    ({"input_0.npy": (npy_header("<f8", (1 << 42,)), 0)}, "declares shape (4398046511104,)"),
])
def test_lying_npy_headers_are_a_clean_refusal(members, message, tmp_path, models, keypair):
    output = {"output_0.npy": (npy_header("<f4", (1, 10)), 40)}
    b = selftest_bundle(tmp_path / "lie.ekb", models["tflite"], npz({**members, **output}),
                        keypair[0])
    store = BundleStore(tmp_path / "store")
    from edgekit_agent.errors import StoreError

    with pytest.raises(StoreError, match="self-test") as info:
        store.install(b, keypair[1])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.status().active is None


def test_honest_vectors_still_pass(tmp_path, models, keypair, images):
    from edgekit_agent.runtime import Runner, load_backend

    runner = Runner(load_backend(models["tflite"], "tflite"))
    x = images[:4]
    y = np.concatenate([runner([x[i:i + 1]])[0] for i in range(4)])
    buf = io.BytesIO()
    np.savez(buf, input_0=x, output_0=y, atol=np.float32(1e-5))
    b = selftest_bundle(tmp_path / "ok.ekb", models["tflite"], buf.getvalue(), keypair[0])
    result = BundleStore(tmp_path / "store").install(b, keypair[1])
    assert result.selftest.kind == "vectors" and result.selftest.vectors == 4
