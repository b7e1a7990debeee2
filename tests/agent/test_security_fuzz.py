"""Issue 10 fuzz run: hostile manifests, self-test .npz members, bundle archives, model bytes and
command payloads. Whatever hypothesis builds, only EdgekitError subclasses escape (one line),
and a refused install leaves every file of the store as it was. Bounded to run in < 60 s
(``EDGEKIT_FUZZ_EXAMPLES`` scales it; CI derandomizes).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit_agent.bundle.manifest import Manifest
from edgekit_agent.bundle.modelcheck import check_onnx, check_tflite
from edgekit_agent.bundle.signing import load_private_key
from edgekit_agent.errors import EdgekitError, ModelError
from edgekit_agent.store.selftest import load_vectors
from edgekit_agent.store.slots import BundleStore
from edgekit_agent.telemetry import schema

sys.path.insert(0, str(Path(__file__).parent / "store"))
from hostile import manifest_dict, manifest_for, snapshot, write_raw  # noqa: E402

SCALE = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "300")) / 300


def budget(n: int) -> settings:
    return settings(max_examples=max(int(n * SCALE), 5), deadline=None, database=None,
                    derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def refused(exc: BaseException) -> None:
    assert isinstance(exc, EdgekitError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                        st.floats(allow_nan=True, allow_infinity=True),
                        st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


# --- manifest fields, through a real install ------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory, models, keypair):
    """A store with two bundles (a rollback target to lose) and the manifest to mutate."""
    root = tmp_path_factory.mktemp("fuzz-store")
    store = BundleStore(root / "store", public_key=keypair[1])
    files = [("model.tflite", models["tflite"], "model")]
    base = manifest_dict(manifest_for(models["tflite"], "tflite", family="cpu", arena=4096), files,
                         security_version=5)
    for n in (1, 2):
        store.install(write_raw(root / f"v{n}.ekb", {**base, "version": str(n)}, files, keypair[0]))
    return store, base, files, root


PATHS = ["name", "version", "family", "security_version", "schema", "source", "model.format",
         "model.size_bytes", "inputs.0.shape", "inputs.0.dtype", "inputs.0.scale", "outputs",
         "outputs.0.shape.1", "target_report.arena_bytes", "target_report", "fidelity",
         "members.0.path", "members.0.size_bytes", "extras", "variants", "primary_variant",
         "latency_ms", "recipe", "notes"]


def _set(d: dict, path: str, value) -> dict:
    d = json.loads(json.dumps(d))
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last) % max(len(node), 1)] = value
    else:
        node[last] = value
    return d


@budget(60)
@given(path=st.sampled_from(PATHS), value=json_value)
def test_fuzzed_manifest_fields_install_or_refuse(installed, keypair, path, value):
    store, base, files, root = installed
    manifest = _set(base, path, value)
    text = json.dumps(manifest, sort_keys=True, allow_nan=True).encode()
    b = write_raw(root / "fuzz.ekb", text, files, keypair[0])
    before = snapshot(store.root)
    try:
        store.install(b)
    except Exception as exc:  # noqa: BLE001 - the assertion is on the type
        refused(exc)
        assert snapshot(store.root) == before
        return
    assert store.status().previous is not None  # an install keeps a rollback target
    Manifest.from_json_bytes(text)  # accepted only if it parses strictly


# --- self-test .npz members -------------------------------------------------------------------

def _npy(descr, shape, fortran, data: bytes, version: bytes) -> bytes:
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}) + "\n"
    size = len(text).to_bytes(2 if version == b"\x01\x00" else 4, "little")
    return b"\x93NUMPY" + version + size + text.encode("utf-8") + data


npy_member = st.builds(
    _npy, st.sampled_from(["<f4", "<f8", ">i8", "|u1", "|b1", "|O", "S5", "<U3", "<c16", "V8",
                           "junk", [("a", "<f4")]]),
    st.one_of(st.lists(st.integers(-2, 1 << 40), max_size=5).map(tuple), json_scalar),
    st.one_of(st.booleans(), json_scalar), st.binary(max_size=600),
    st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))


@budget(100)
@given(members=st.lists(st.tuples(st.sampled_from(["input_0.npy", "output_0.npy", "atol.npy",
                                                   "rtol.npy", "x.npy", "input_0"]),
                                  st.one_of(npy_member, st.binary(max_size=64))), max_size=4),
       method=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_fuzzed_npz_members_load_or_refuse(installed, members, method):
    store, *_ = installed
    variant = store.active().manifest.primary
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    try:
        arrays = load_vectors(buf.getvalue(), variant)
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        return
    assert sum(a.nbytes for a in arrays.values()) <= 64 << 20


# --- bundle archive members, through a real install -----------------------------------------------

@budget(40)
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                      max_size=4))
def test_fuzzed_bundle_archive_installs_or_refuses(installed, keypair, edits):
    store, base, files, root = installed
    data = bytearray(write_raw(root / "base.ekb", {**base, "version": "3"}, files,
                               keypair[0]).read_bytes())
    for pos, value in edits:
        data[pos % len(data)] = value
    b = root / "mutant.ekb"
    b.write_bytes(bytes(data))
    before = snapshot(store.root)
    try:
        store.install(b)
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        assert snapshot(store.root) == before


# --- model bytes: the verifiers themselves --------------------------------------------------------

@budget(300)
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                      max_size=6), tail=st.booleans())
def test_fuzzed_tflite_and_onnx_bytes_give_model_errors_only(models, edits, tail):
    for kind, check in (("tflite", check_tflite), ("onnx", check_onnx)):
        data = bytearray(models[kind])
        for pos, value in edits:
            # half of the edits land in the last 3 KB, where the flatbuffer tables are
            pos = len(data) - 1 - pos % 3000 if tail else pos % len(data)
            data[pos] = value
        try:
            check(bytes(data))
        except ModelError as exc:
            assert "\n" not in str(exc)


# --- command payloads ---------------------------------------------------------------------------

@budget(150)
@given(body=st.dictionaries(st.sampled_from(["schema", "device", "seq", "ts", "id", "action",
                                             "args", "sig", "reply_to", "extra"]), json_value,
                            max_size=9),
       action=st.sampled_from([*schema.ACTIONS, "reboot", ""]),
       args=st.dictionaries(st.sampled_from(["mode", "duration_s", "x"]), json_value, max_size=3),
       raw=st.binary(max_size=80), shape=st.sampled_from(["signed", "json", "raw"]))
def test_fuzzed_command_payloads_give_command_errors_only(keypair, tmp_path_factory, body,
                                                          action, args, raw, shape):
    verifier = schema.CommandVerifier("dev1", keypair[1], replay_dir=tmp_path_factory.getbasetemp())
    if shape == "signed":
        try:
            payload = schema.sign_command(load_private_key(keypair[0]), "dev1", action, args)
        except EdgekitError:
            return  # the host side refused to build it (NaN args): nothing to send
    elif shape == "json":
        payload = json.dumps(body, allow_nan=True).encode()
    else:
        payload = raw
    try:
        cmd = verifier.parse(payload)
    except Exception as exc:  # noqa: BLE001
        refused(exc)
        return
    assert cmd.action in schema.ACTIONS and all(
        not isinstance(v, float) or math.isfinite(v) for v in cmd.args.values())
