"""Issue 10, finding 1: ONNX external data is resolved only inside the model's own folder.

The attack: a model in ``models/`` names ``fleet.key`` as the file holding its weights, and the
packer runs in the build folder where the fleet's signing key lives. Before, the key's bytes
went into the signed bundle (as the model's outputs in ``selftest.npz``); absolute, ``..`` and
symlink locations gave tracebacks. Now every location is refused with one line, and external
data that really sits beside the model is inlined, hashed and signed with it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from edgekit_agent.bundle.reader import open_bundle

# the agent's store tests build the same hostile model (the device refuses it too)
sys.path.insert(0, str(Path(__file__).parents[2] / "agent" / "store"))
from hostile import LEAK_FLOATS, leaky_onnx  # noqa: E402

N = LEAK_FLOATS  # floats of external data the model reads (64 bytes)


def leaky_model(folder: Path, location: str, n: int = N) -> Path:
    """y = x + w, where w's bytes are 'stored' in ``location`` (the attack: w = a secret)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "leak.onnx"
    path.write_bytes(leaky_onnx(location, n))
    return path


@pytest.fixture
def build_dir(tmp_path, keypair) -> Path:
    """The build machine's working folder, holding the fleet's private key as fleet.key."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "fleet.key").write_bytes(keypair[0].read_bytes())
    return build


def _pack(edgekit_cli, model: Path, out: Path, cwd: Path, *extra: str):
    return edgekit_cli("pack", model, "--target", "x86-64", "-o", out, "--synthetic-calib",
                       "--recipe", "fp32", "--runtime", "onnxruntime", *extra, cwd=cwd)


def _leaked(bundle: Path, secret: bytes) -> bool:
    """Does the bundle carry the secret (as y - x of its self-test vectors, or raw)?"""
    with zipfile.ZipFile(bundle) as zf:
        if any(secret[:32] in zf.read(n) for n in zf.namelist()):
            return True
        npz = np.load(io.BytesIO(zf.read("selftest.npz")))
        diff = (npz["output_0"] - npz["input_0"]).astype(np.float32)
    want = np.frombuffer(secret[:4 * N], np.float32)
    return bool(np.allclose(diff.reshape(-1, N)[0], want, rtol=1e-4))


def test_a_model_naming_the_signing_key_does_not_pack_it(build_dir, tmp_path, edgekit_cli,
                                                         cli_error):
    model = leaky_model(tmp_path / "models", "fleet.key")
    out = tmp_path / "leak.ekb"
    err = cli_error(_pack(edgekit_cli, model, out, build_dir),
                    "tensor 'w': external data location 'fleet.key'", "No such file")
    assert not out.exists(), err


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink", "symlinked-folder"])
def test_locations_outside_the_models_folder_are_refused(where, build_dir, tmp_path, edgekit_cli,
                                                         cli_error):
    models = tmp_path / "models"
    models.mkdir()
    key = build_dir / "fleet.key"
    location = {"absolute": str(key), "dotdot": "../build/fleet.key",
                "symlink": "weights.bin", "symlinked-folder": "data/fleet.key"}[where]
    if where == "symlink":
        (models / "weights.bin").symlink_to(key)
    if where == "symlinked-folder":
        (models / "data").symlink_to(build_dir)
    model = leaky_model(models, location)
    out = tmp_path / "leak.ekb"
    expected = {"absolute": "is not a path relative to the model's folder",
                "dotdot": "leaves the model's folder", "symlink": "goes through a symbolic link",
                "symlinked-folder": "goes through a symbolic link"}[where]
    cli_error(_pack(edgekit_cli, model, out, build_dir), expected)
    assert not out.exists()


def test_external_data_beside_the_model_is_inlined_hashed_and_signed(build_dir, tmp_path, keypair,
                                                                     edgekit_cli):
    models = tmp_path / "models"
    models.mkdir()
    weights = np.linspace(-1, 1, N, dtype=np.float32)
    (models / "weights.bin").write_bytes(weights.tobytes())
    model = leaky_model(models, "weights.bin")
    out = tmp_path / "ok.ekb"
    proc = _pack(edgekit_cli, model, out, build_dir, "--sign", str(keypair[0]))
    assert proc.returncode == 0, proc.stderr
    bundle = open_bundle(out, keypair[1])
    shipped = bundle.read_model()
    from edgekit_agent.bundle.modelcheck import check_onnx  # (new module)

    check_onnx(shipped)  # no reference left: the device accepts it
    inlined = onnx.load_from_string(shipped).graph.initializer[0]
    assert inlined.data_location == TensorProto.DEFAULT and not inlined.external_data
    assert np.array_equal(np.frombuffer(inlined.raw_data, np.float32), weights)
    os.remove(models / "weights.bin")  # the bundle must not need it any more
    store = tmp_path / "store"
    installed = subprocess.run([sys.executable, "-m", "edgekit_agent.cli", "install", str(out),
                                "--store", str(store), "--key", str(keypair[1])],
                               capture_output=True, text=True, timeout=120, cwd=build_dir)
    assert installed.returncode == 0, installed.stderr
    assert not _leaked(out, (build_dir / "fleet.key").read_bytes())
