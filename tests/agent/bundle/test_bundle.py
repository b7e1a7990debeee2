"""Bundle format v1: write → inspect → verify round trip, tamper detection, a malformed corpus.

Tests of the host's writer and CLI are marked ``host``; the reader's run on the agent alone."""

from __future__ import annotations

import json
import stat
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgekit_agent.bundle.manifest import Manifest, sha256_hex
from edgekit_agent.bundle.reader import (
    MAX_MANIFEST_BYTES,
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    SIGNATURE_NAME,
    open_bundle,
)
from edgekit_agent.bundle.signing import generate_keypair
from edgekit_agent.errors import BundleError, EdgekitError, IntegrityError, SignatureError

from .zipcraft import (
    CD_CRC,
    CD_FLAGS,
    CD_USIZE,
    Parts,
    build,
    local_data_offset,
    patch_central,
    zip_bytes,
)


@pytest.fixture(scope="module")
def host_writer():
    """(MemberFile, write_bundle) of the host package."""
    from edgekit.bundle_writer import MemberFile, write_bundle

    return MemberFile, write_bundle


CONTRACT_KEYS = ("schema", "target", "model", "source", "recipe", "fidelity", "latency_ms",
                 "target_report")


def rewrite_member(src: Path, dst: Path, name: str, mutate: Callable[[bytes], bytes]) -> None:
    """Copy an archive, changing one member's content; every other entry keeps its bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, mutate(data) if info.filename == name else data)


def flip(pos: int) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        i = pos % len(data)
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    return mutate


# --- round trip -------------------------------------------------------------------------------

def test_written_bundle_is_a_plain_zip_with_listed_members(make_bundle, digits):
    path = make_bundle()
    model = digits.tflite.read_bytes()
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["labels.txt", "manifest.json", "manifest.sig", "model.tflite"]
        assert zf.read("model.tflite") == model
        assert len(zf.read(SIGNATURE_NAME)) == 64
        manifest = json.loads(zf.read("manifest.json"))
    listed = {m["path"]: m for m in manifest["members"]}
    assert listed["model.tflite"]["sha256"] == sha256_hex(model)
    assert listed["model.tflite"]["size_bytes"] == len(model) == digits.tflite.stat().st_size
    # the deflated archive is smaller than what it holds
    assert path.stat().st_size < len(model)


def test_manifest_round_trips_through_json(make_bundle, keypair):
    bundle = open_bundle(make_bundle(), keypair[1])
    again = Manifest.from_json_bytes(bundle.manifest.to_json_bytes())
    assert again == bundle.manifest
    assert bundle.signed and bundle.signature_checked and len(bundle.key_id) == 16


@pytest.mark.host
def test_inspect_json_prints_the_contract_fields(make_bundle, digits, edgekit_cli):
    proc = edgekit_cli("inspect", make_bundle(), "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    model = digits.tflite.read_bytes()
    for key in CONTRACT_KEYS:
        assert key in m, key
    assert m["schema"] == "edgekit.bundle/1" and m["target"] == "x86-64"
    assert {k: m["model"][k] for k in ("path", "format", "sha256", "size_bytes")} == {
        "path": "model.tflite", "format": "tflite", "sha256": sha256_hex(model),
        "size_bytes": len(model)}
    assert m["source"]["size_bytes"] == len(model) and m["source"]["latency_ms"] == 0.05
    assert m["recipe"] == [{"step": "none"}]
    assert m["fidelity"]["outputs"]["logits"]["sqnr_db"] == 99.0 and m["fidelity"]["top1_agreement"] == 1.0
    assert m["target_report"]["fits"] is True
    assert {x["path"] for x in m["members"]} == {"model.tflite", "labels.txt"}


@pytest.mark.host
def test_verify_with_key_reports_hashes_and_signature(make_bundle, keypair, edgekit_cli):
    path = make_bundle()
    proc = edgekit_cli("verify", path, "--key", keypair[1])
    assert proc.returncode == 0, proc.stderr
    key_id = open_bundle(path, keypair[1]).key_id
    assert f"2 members, hashes OK, signature OK (key {key_id})" in proc.stdout


@pytest.mark.host
def test_verify_without_key_says_the_signature_was_not_checked(make_bundle, edgekit_cli):
    signed = edgekit_cli("verify", make_bundle())
    unsigned = edgekit_cli("verify", make_bundle(sign=False))
    assert signed.returncode == unsigned.returncode == 0
    assert "signature not checked" in signed.stdout and "unsigned" in unsigned.stdout


@pytest.mark.host
@pytest.mark.parametrize("member", ["model.tflite", "labels.txt"])
@pytest.mark.parametrize("pos", [0, 777, -1])
def test_flipped_member_byte_fails_verify_naming_the_member(make_bundle, keypair, edgekit_cli,
                                                            cli_error, tmp_path, member, pos):
    bad = tmp_path / "bad.ekb"
    rewrite_member(make_bundle(), bad, member, flip(pos))
    cli_error(edgekit_cli("verify", bad, "--key", keypair[1]), f"member '{member}' sha256 mismatch")


@pytest.mark.host
@pytest.mark.parametrize("name", ["manifest.json", "manifest.sig"])
@pytest.mark.parametrize("pos", [0, 40, -1])
def test_flipped_manifest_or_signature_byte_fails_verify(make_bundle, keypair, edgekit_cli,
                                                          cli_error, tmp_path, name, pos):
    bad = tmp_path / "bad.ekb"
    rewrite_member(make_bundle(), bad, name, flip(pos))
    cli_error(edgekit_cli("verify", bad, "--key", keypair[1]),
              "signature does not match: signed with another key than ")


@pytest.mark.host
def test_flipped_byte_in_compressed_data_names_the_member(make_bundle, keypair, edgekit_cli,
                                                          cli_error, tmp_path):
    raw = bytearray(make_bundle().read_bytes())
    raw[local_data_offset(bytes(raw), "model.tflite") + 5000] ^= 0x01
    bad = tmp_path / "bad.ekb"
    bad.write_bytes(raw)
    cli_error(edgekit_cli("verify", bad, "--key", keypair[1]), "member 'model.tflite'")


def test_bundle_read_rechecks_a_member_changed_after_opening(make_bundle, keypair, tmp_path):
    path = make_bundle()
    bundle = open_bundle(path, keypair[1])
    assert bundle.read_model() == bundle.read("model.tflite")
    rewrite_member(path, tmp_path / "x.ekb", "model.tflite", flip(3))
    (tmp_path / "x.ekb").replace(path)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        bundle.read_model()


# --- writer -----------------------------------------------------------------------------------

@pytest.mark.host
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_writer_refuses_a_bundle_the_reader_would_reject_and_keeps_the_old_file(host_writer,
        make_bundle, digits_manifest, tmp_path):
    MemberFile, write_bundle = host_writer
    old = make_bundle()
    before = old.read_bytes()
    manifest = digits_manifest(b"model")
    for files, message in (
            ([MemberFile("../model.tflite", b"model")], r"unsafe archive member name '\.\./model"),
            ([MemberFile("other.tflite", b"model")], "model 'model.tflite' is not a listed member"),
            ([MemberFile("model.tflite", b"model"), MemberFile("model.tflite", b"x")], "twice")):
        with pytest.raises(BundleError, match=message) as info:
            write_bundle(old, manifest, files)
        assert str(info.value).startswith(f"{old} not written: ")
        assert old.read_bytes() == before
    assert [p.name for p in old.parent.iterdir()] == [old.name]  # no temporary left behind


@pytest.mark.host
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float32(0.5)])
def test_writer_refuses_evidence_that_is_not_json(host_writer, digits_manifest, tmp_path, bad):
    MemberFile, write_bundle = host_writer
    manifest = digits_manifest(b"m")
    fidelity = replace(manifest.primary.fidelity, top1_agreement=bad)
    manifest = manifest.replace(primary=replace(manifest.primary, fidelity=fidelity))
    with pytest.raises(BundleError, match="manifest cannot be stored as JSON"):
        write_bundle(tmp_path / "x.ekb", manifest, [MemberFile("model.tflite", b"m")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.host
def test_writer_maps_an_unwritable_target_to_an_edgekit_error(host_writer, digits_manifest, tmp_path):
    MemberFile, write_bundle = host_writer
    (tmp_path / "dir.ekb").mkdir()
    with pytest.raises(EdgekitError, match="dir.ekb"):
        write_bundle(tmp_path / "dir.ekb", digits_manifest(b"m"), [MemberFile("model.tflite", b"m")])
    with pytest.raises(EdgekitError, match="does not exist"):
        write_bundle(tmp_path / "no" / "x.ekb", digits_manifest(b"m"), [MemberFile("model.tflite", b"m")])


@pytest.mark.host
def test_identical_inputs_give_identical_unsigned_archives(host_writer, digits_manifest, tmp_path):
    MemberFile, write_bundle = host_writer
    files = [MemberFile("model.tflite", b"model-bytes")]
    a = write_bundle(tmp_path / "a.ekb", digits_manifest(b"model-bytes"), files).read_bytes()
    b = write_bundle(tmp_path / "b.ekb", digits_manifest(b"model-bytes"), files).read_bytes()
    assert a == b


# --- the malformed corpus ---------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    make: Callable[[Parts, Path], bytes]   # (valid parts, private key) -> archive bytes
    error: type[EdgekitError]
    message: str                           # regex the error message must match


def _edit(fn: Callable[[dict], None]) -> Callable[[Parts, Path], bytes]:
    """A signed bundle whose manifest ``fn`` changed (so only the structural check can catch it)."""
    def make(parts: Parts, key: Path) -> bytes:
        p = parts.copy()
        fn(p.manifest)
        return build(p, key)
    return make


def _files(fn: Callable[[dict], None], relist: bool = False) -> Callable[[Parts, Path], bytes]:
    def make(parts: Parts, key: Path) -> bytes:
        p = parts.copy()
        fn(p.files)
        return build(p.relist() if relist else p, key)
    return make


def _member_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def _raw_manifest(text: bytes) -> Callable[[Parts, Path], bytes]:
    return lambda parts, key: build(parts, key, manifest_bytes=text)


def _valid(parts: Parts, key: Path) -> bytes:
    return build(parts, key)


def _lying_header_bomb(parts: Parts, key: Path) -> bytes:
    """64 MiB of zeros whose headers claim the real model's size and CRC."""
    model = parts.files["model.tflite"]
    p = parts.copy()
    p.files["model.tflite"] = bytes(64 << 20)
    data = build(p, key)
    data = patch_central(data, "model.tflite", CD_USIZE, "<I", len(model))
    return patch_central(data, "model.tflite", CD_CRC, "<I", zlib.crc32(model))


def _lzma_with_garbage(parts: Parts, key: Path) -> bytes:
    data = bytearray(build(parts, key, method=zipfile.ZIP_LZMA))
    start = local_data_offset(bytes(data), "model.tflite")
    data[start + 20:start + 60] = bytes(40)
    return bytes(data)


def _zeroed_deflate(parts: Parts, key: Path) -> bytes:
    data = _valid(parts, key)
    start = local_data_offset(data, "model.tflite") + 100
    return data[:start] + bytes(50) + data[start + 50:]


def _set(path: str, value) -> Callable[[dict], None]:
    def fn(m: dict) -> None:
        *parents, last = path.split(".")
        target = m
        for k in parents:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[int(last) if isinstance(target, list) else last] = value
    return fn


def _drop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


CASES: dict[str, Case] = {
    "empty file": Case(lambda p, k: b"", BundleError, "not a bundle archive"),
    "not a zip": Case(lambda p, k: b"#!/bin/sh\necho model\n" * 50, BundleError, "not a bundle archive"),
    "truncated to half": Case(lambda p, k: (lambda d: d[: len(d) // 2])(_valid(p, k)), BundleError,
                              "not a bundle archive"),
    "truncated by one byte": Case(lambda p, k: _valid(p, k)[:-1], BundleError, "not a bundle archive"),
    "central directory cut off": Case(
        lambda p, k: (lambda d: d[: d.find(b"PK\x01\x02")])(_valid(p, k)), BundleError,
        "not a bundle archive"),
    "no manifest": Case(lambda p, k: zip_bytes(list(p.files.items())), BundleError, "no manifest.json"),
    "unknown schema": Case(_edit(_set("schema", "edgekit.bundle/2")), BundleError,
                           "manifest.json: schema: 'edgekit.bundle/2' is not one of the allowed values "
                           r"\(allowed: edgekit.bundle/1\)"),
    "member hash differs": Case(_edit(_set("members.1.sha256", "0" * 64)), IntegrityError,
                                "member 'labels.txt' sha256 mismatch"),
    "model hash differs": Case(_edit(lambda m: [_set(k, "0" * 64)(m) for k in ("members.0.sha256",
                                                                               "model.sha256")]),
                               IntegrityError, "member 'model.tflite' sha256 mismatch"),
    "member size larger than listed": Case(_edit(_set("members.1.size_bytes", 10)), IntegrityError,
                                           "'labels.txt' is larger than the 10 bytes listed"),
    "member size smaller than listed": Case(_files(lambda f: f.update({"labels.txt": b"0\n"})),
                                            IntegrityError, "'labels.txt' is 2 bytes, manifest says 20"),
    "manifest claims a huge member": Case(_edit(_set("members.1.size_bytes", 10 ** 12)),
                                          IntegrityError, "'labels.txt' is 20 bytes"),
    "path traversal": Case(lambda p, k: build(p, k, extra=[("../evil.sh", b"x")]), BundleError,
                           r"unsafe archive member name '\.\./evil\.sh'"),
    "nested traversal": Case(lambda p, k: build(p, k, extra=[("a/../../evil", b"x")]), BundleError,
                             "unsafe archive member name"),
    "absolute path": Case(lambda p, k: build(p, k, extra=[("/etc/cron.d/x", b"x")]), BundleError,
                          "unsafe archive member name '/etc/cron.d/x'"),
    "backslash path": Case(lambda p, k: build(p, k, extra=[("..\\..\\evil", b"x")]), BundleError,
                           "unsafe archive member name"),
    "drive letter": Case(lambda p, k: build(p, k, extra=[("C:evil", b"x")]), BundleError,
                         "unsafe archive member name"),
    "directory entry": Case(lambda p, k: build(p, k, extra=[("models/", b"")]), BundleError,
                            "unsafe archive member name 'models/'"),
    "symlink member": Case(lambda p, k: build(p, k, extra=[(_member_info("link", stat.S_IFLNK | 0o777),
                                                            b"/etc/passwd")]),
                           BundleError, "'link' is a symbolic link"),
    "duplicate names": Case(lambda p, k: build(p, k, extra=[("labels.txt", b"other")]), BundleError,
                            "holds 'labels.txt' twice"),
    "member not listed": Case(lambda p, k: build(p, k, extra=[("payload.so", b"\x7fELF")]),
                              IntegrityError, "'payload.so' is not listed"),
    "listed member missing": Case(_files(lambda f: f.pop("labels.txt")), IntegrityError,
                                  "'labels.txt' is listed in the manifest but missing"),
    "model not a member": Case(_edit(_set("model.path", "other.tflite")), IntegrityError,
                               "model 'other.tflite' is not a listed member"),
    "model hash differs from its member entry": Case(_edit(_set("model.sha256", "1" * 64)),
                                                     IntegrityError, "model 'model.tflite'"),
    "member listed twice": Case(_edit(lambda m: m["members"].append(dict(m["members"][0]))),
                                IntegrityError, "lists a member twice"),
    "declared huge size": Case(lambda p, k: patch_central(_valid(p, k), "model.tflite", CD_USIZE,
                                                          "<I", 0xFFFFFFF0),
                               BundleError, f"over the {MAX_MEMBER_BYTES} byte limit"),
    "extreme compression ratio": Case(_files(lambda f: f.update({"zeros.bin": bytes(4 << 20)}), True),
                                      BundleError, "refusing a zip bomb"),
    "lying header bomb": Case(_lying_header_bomb, IntegrityError, "member 'model.tflite'"),
    "too many entries": Case(_files(lambda f: f.update({f"x{i}": b"" for i in range(MAX_MEMBERS)}), True),
                             BundleError, f"more than {MAX_MEMBERS}"),
    "huge manifest": Case(_edit(_set("notes", ["x" * MAX_MANIFEST_BYTES])), BundleError,
                          f"'manifest.json' is larger than the {MAX_MANIFEST_BYTES} byte limit"),
    "manifest not JSON": Case(_raw_manifest(b"{'schema': edgekit"), BundleError,
                              "manifest.json is not valid JSON"),
    "manifest not UTF-8": Case(_raw_manifest(b'{"schema": "\xff\xfe"}'), BundleError,
                               "manifest.json is not valid JSON"),
    "manifest is a list": Case(_raw_manifest(b"[1, 2, 3]"), BundleError,
                              r"manifest.json: <top>: \[1, 2, 3\] is not a table"),
    "manifest deeply nested": Case(_raw_manifest(b"[" * 100_000 + b"]" * 100_000), BundleError,
                                   "manifest.json is not valid JSON"),
    "manifest integer too long": Case(_raw_manifest(b'{"schema": ' + b"9" * 5000 + b"}"), BundleError,
                                      "manifest.json is not valid JSON"),
    "manifest missing target": Case(_edit(_drop("target")), BundleError,
                                    "manifest.json: target: missing is not a string"),
    "manifest missing members": Case(_edit(_drop("members")), BundleError,
                                    "manifest.json: members: missing is not a list"),
    "members not a list": Case(_edit(_set("members", "model.tflite")), BundleError,
                               "manifest.json: members: 'model.tflite' is not a list"),
    "size is a string": Case(_edit(_set("members.0.size_bytes", "big")), BundleError,
                             r"manifest.json: members\[0\].size_bytes: 'big' is not an integer"),
    "size is infinite": Case(_edit(_set("members.0.size_bytes", float("inf"))), BundleError,
                             "manifest.json is not valid JSON: Infinity is not allowed"),
    "size is a bool": Case(_edit(_set("model.size_bytes", True)), BundleError,
                           "manifest.json: model.size_bytes: True is not an integer"),
    "target is an object": Case(_edit(_set("target", {"name": "x86-64"})), BundleError,
                                "manifest.json: target: {'name': 'x86-64'} is not a string"),
    "shape holds a string": Case(_edit(_set("inputs.0.shape", [1, "eight", 8, 1])), BundleError,
                                 r"manifest.json: inputs\[0\].shape\[1\]: 'eight' is not an integer"),
    "scale is a string": Case(_edit(_set("inputs.0.scale", "0.1")), BundleError,
                              r"manifest.json: inputs\[0\].scale: '0.1' is not a number"),
    "unknown model format": Case(_edit(_set("model.format", "pickle")), BundleError,
                                 "manifest.json: model.format: 'pickle' is not one of the allowed values "
                                 r"\(allowed: onnx, tflite, tflm-c\)"),
    "bad signature": Case(lambda p, k: build(p, k, signature=bytes(range(64))), SignatureError,
                          "signature does not match"),
    "signature of wrong length": Case(lambda p, k: build(p, k, signature=b"\x01" * 63), SignatureError,
                                      "signature is 63 bytes, expected 64"),
    "oversized signature": Case(lambda p, k: build(p, k, signature=b"\x01" * 5000), BundleError,
                                "'manifest.sig' is larger than the 1024 byte limit"),
    "missing signature when a key is required": Case(lambda p, k: build(p, None), SignatureError,
                                                     "not signed, but a key was given"),
    "encrypted flag set": Case(lambda p, k: patch_central(_valid(p, k), "labels.txt", CD_FLAGS, "<H", 1),
                               BundleError, "'labels.txt' is encrypted"),
    "lzma member with corrupt data": Case(_lzma_with_garbage, BundleError, "compression"),
    "corrupt deflate data": Case(_zeroed_deflate, IntegrityError, "member 'model.tflite' is corrupt"),
}


@pytest.fixture(scope="module")
def parts(make_bundle) -> Parts:
    return Parts.read(make_bundle())


def test_corpus_is_large_enough():
    assert len(CASES) >= 20


def test_corpus_control_rebuilt_valid_bundle_opens(parts, keypair, tmp_path):
    path = tmp_path / "ok.ekb"
    path.write_bytes(_valid(parts, keypair[0]))
    assert open_bundle(path, keypair[1]).manifest.model.sha256 == parts.manifest["model"]["sha256"]


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_bundle_is_refused(name, parts, keypair, tmp_path):
    case = CASES[name]
    path = tmp_path / "bad.ekb"
    path.write_bytes(case.make(parts, keypair[0]))
    with pytest.raises(EdgekitError) as info:
        open_bundle(path, keypair[1])
    assert isinstance(info.value, case.error), (type(info.value), info.value)
    assert "\n" not in str(info.value)
    assert info.match(case.message)


@pytest.mark.parametrize("name", ["symlink member", "member not listed", "size is infinite",
                                  "lzma member with corrupt data", "manifest integer too long"])
def test_malformed_bundle_is_refused_without_a_key_too(name, parts, keypair, tmp_path):
    path = tmp_path / "bad.ekb"
    path.write_bytes(CASES[name].make(parts, keypair[0]))
    with pytest.raises(CASES[name].error, match=CASES[name].message):
        open_bundle(path)


def test_lying_header_bomb_is_read_in_bounded_memory(parts, keypair, tmp_path):
    path = tmp_path / "bomb.ekb"
    path.write_bytes(_lying_header_bomb(parts, keypair[0]))
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError):
            open_bundle(path, keypair[1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} B while refusing a 64 MiB stream"


def test_wrong_key_is_refused(make_bundle, tmp_path):
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError, match="signature does not match"):
        open_bundle(make_bundle(), other_pub)


SECP112R1_PUB = (b"-----BEGIN PUBLIC KEY-----\nMDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEJnpKR5xzKL/kiEg4bwsriZBNh+wZwzeh\n"
                 b"MnhfwA==\n-----END PUBLIC KEY-----\n")  # a curve cryptography cannot load


def _p256_pem(private: bool) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    if private:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("content, message", [
    (b"", "not a PEM key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM key"),
    (SECP112R1_PUB, "not a PEM key"),
    (_p256_pem(private=False), "not an ed25519 public key"),
], ids=["empty", "bad base64", "unsupported curve", "p256"])
def test_unusable_public_key_is_refused(make_bundle, tmp_path, content, message):
    key = tmp_path / "k.pub"
    key.write_bytes(content)
    with pytest.raises(SignatureError, match=message):
        open_bundle(make_bundle(), key)


@pytest.mark.host
@pytest.mark.parametrize("content, message", [
    (_p256_pem(private=True), "not an ed25519 private key"),
    (_p256_pem(private=False), "not a PEM key"),
], ids=["p256 private", "public as private"])
def test_writer_refuses_an_unusable_signing_key(host_writer, digits_manifest, tmp_path, content, message):
    MemberFile, write_bundle = host_writer
    key = tmp_path / "k.key"
    key.write_bytes(content)
    with pytest.raises(SignatureError, match=message):
        write_bundle(tmp_path / "x.ekb", digits_manifest(b"m"), [MemberFile("model.tflite", b"m")], key)
    assert not (tmp_path / "x.ekb").exists()


def test_private_key_given_as_public_key_is_refused(make_bundle, keypair):
    with pytest.raises(SignatureError, match="not a PEM key"):
        open_bundle(make_bundle(), keypair[0])


def test_missing_files_are_refused(tmp_path, keypair, make_bundle):
    with pytest.raises(BundleError, match="no such bundle file"):
        open_bundle(tmp_path / "nope.ekb")
    with pytest.raises(BundleError, match="no such bundle file"):
        open_bundle(tmp_path)
    with pytest.raises(SignatureError, match="cannot read key"):
        open_bundle(make_bundle(), tmp_path / "nope.pub")
