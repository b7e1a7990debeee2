"""Hostile bundles for the issue-10 store tests, built from agent code and onnx only."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from edgekit_agent.bundle import signing
from edgekit_agent.bundle.manifest import (
    Manifest,
    Member,
    ModelRef,
    TargetReport,
    TensorSpec,
    Variant,
    sha256_hex,
)
from edgekit_agent.bundle.reader import MANIFEST_NAME, SIGNATURE_NAME
from edgekit_agent.runtime import load_backend

_ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)
LEAK_FLOATS = 16


def leaky_onnx(location: str, n: int = LEAK_FLOATS) -> bytes:
    """y = x + w, with w 'stored' in the external file ``location`` (relative to the cwd of ORT)."""
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, n])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "leak",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def manifest_for(model: bytes, fmt: str, *, specs_from: bytes | None = None, family: str = "cpu",
                 arena: Any = None, name: str = "digits", version: str = "1") -> Manifest:
    if fmt == "onnx" and specs_from is None:
        inputs = (TensorSpec("x", (1, LEAK_FLOATS), "float32"),)
        outputs = (TensorSpec("y", (1, LEAK_FLOATS), "float32"),)
    else:
        backend = load_backend(specs_from or model, fmt)
        inputs, outputs = backend.inputs, backend.outputs
    report = TargetReport(family=family, arena_bytes=arena) if arena is not None else None
    primary = Variant(name="primary", model=ModelRef(path=f"model.{fmt}", format=fmt,
                                                     sha256=sha256_hex(model), size_bytes=len(model)),
                      inputs=inputs, outputs=outputs, target_report=report)
    return Manifest(name=name, version=version, target="x86-64", family=family, primary=primary,
                    members=(), created="2024-01-01T00:00:00+00:00")


def manifest_dict(m: Manifest, files: list[tuple[str, bytes, str]],
                  security_version: int | None = None) -> dict[str, Any]:
    """The manifest as JSON data, with the anti-rollback counter when given (written as a plain
    key, so that the same bundles can be fed to an agent that predates it)."""
    members = tuple(Member(p, sha256_hex(d), len(d), r) for p, d, r in files)
    d = m.replace(members=members).to_dict()
    return d if security_version is None else {**d, "security_version": security_version}


def write_raw(out: Path, manifest: dict[str, Any] | bytes, files: list[tuple[str, bytes, str]],
              sign_key: Path | None, *, edit=None) -> Path:
    """A bundle whose manifest bytes are exactly what a (hostile) signer wrote: ``edit`` turns
    the canonical JSON text into anything, and that text is what gets signed."""
    if isinstance(manifest, Manifest):
        manifest = manifest_dict(manifest, files)
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest, sort_keys=True).encode()
    if edit is not None:
        body = edit(body)
    entries = [(MANIFEST_NAME, body)]
    if sign_key is not None:
        entries.append((SIGNATURE_NAME, signing.sign(signing.load_private_key(sign_key), body)))
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries + [(p, d) for p, d, _ in files]:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out


def bundle(out: Path, model: bytes, fmt: str, sign_key: Path | None, *,
           security_version: int | None = None, **kw: Any) -> Path:
    m = manifest_for(model, fmt, **kw)
    files = [(m.model.path, model, "model")]
    return write_raw(out, manifest_dict(m, files, security_version), files, sign_key)


def agent(*args: Any, cwd: Path | str | None = None, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit_agent.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for f in fragments:
        assert f in err, (f, err)
    return err


def snapshot(store: Path) -> dict[str, bytes]:
    """Every file of a store (what a refusal must leave untouched)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != ".lock"}
