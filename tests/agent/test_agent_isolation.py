"""The device package stands alone: it installs into a fresh venv with only numpy, paho-mqtt and
cryptography, imports without edgekit/onnx/tensorflow, and verifies bundles there."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
PACKAGE = AGENT / "edgekit_agent"
# What the device side may import at module level besides the standard library.
# tomli is tomllib for Python 3.10 (tomllib is in the standard library from 3.11 on).
ALLOWED_THIRD_PARTY = {"numpy", "paho", "cryptography", "tomli", "tomllib"}
VENV_PACKAGES = ["numpy", "paho-mqtt", "cryptography", "cffi", "pycparser",
                 *(["tomli"] if sys.version_info < (3, 11) else [])]


def agent_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 5, files  # errors, manifest, bundle, signing, runtime at least
    return files


def imported_modules(tree: ast.AST, module_level_only: bool) -> list[tuple[int, str]]:
    """(line, top-level module name) of absolute imports; skip function bodies if asked."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_no_agent_file_imports_edgekit():
    offenders = [f"{path.relative_to(AGENT)}:{line}"
                 for path in agent_sources()
                 for line, name in imported_modules(ast.parse(path.read_text()), False)
                 if name == "edgekit"]
    assert offenders == []


def test_agent_module_level_imports_are_stdlib_numpy_paho_cryptography_only():
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"__future__"}
    offenders = [f"{path.relative_to(AGENT)}:{line} imports {name}"
                 for path in agent_sources()
                 for line, name in imported_modules(ast.parse(path.read_text()), True)
                 if name not in allowed]
    assert offenders == []


def test_static_scan_catches_an_edgekit_import(tmp_path):
    # the scanner itself must see imports wherever they hide
    tree = ast.parse("def f():\n    from edgekit.cli import main\ntry:\n    import edgekit.ui\n"
                     "except ImportError:\n    pass\n")
    assert [n for _, n in imported_modules(tree, False)] == ["edgekit", "edgekit"]
    assert [n for _, n in imported_modules(tree, True)] == ["edgekit"]


CHECK = r"""
import importlib, json, pkgutil, sys
import edgekit_agent
modules = sorted(m.name for m in pkgutil.walk_packages(edgekit_agent.__path__, "edgekit_agent."))
for name in modules:
    importlib.import_module(name)
heavy = sorted(m for m in ("edgekit", "onnx", "onnxruntime", "tensorflow", "ai_edge_litert",
                           "tflite_runtime", "ethosu", "tflite_micro") if m in sys.modules)
missing = []
for name in ("edgekit", "onnx", "tensorflow", "ethosu"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
from edgekit_agent.bundle.reader import open_bundle
from edgekit_agent.errors import EdgekitError
b = open_bundle(sys.argv[1], sys.argv[2])
try:
    open_bundle(sys.argv[3], sys.argv[2])
    tampered = "accepted"
except EdgekitError as exc:
    tampered = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"modules": modules, "heavy": heavy, "missing": missing, "key_id": b.key_id,
                  "model_sha256": b.manifest.model.sha256, "model_len": len(b.read_model()),
                  "tampered": tampered, "file": edgekit_agent.__file__}))
"""


def test_agent_installs_and_verifies_bundles_in_a_bare_venv(tmp_path, make_bundle, keypair):
    from edgekit_agent.bundle.reader import open_bundle

    src = tmp_path / "agent"
    shutil.copytree(AGENT, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    # no ensurepip: the host's pip installs into the venv (--python), which saves ~10 s
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    pip = [sys.executable, "-m", "pip", "--python", py]
    done = subprocess.run([*pip, "install", "-q", "--no-deps", str(src), *VENV_PACKAGES],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True,
                            check=True, env=env, cwd=tmp_path)
    assert {p["name"].lower() for p in json.loads(listed.stdout)} == {"edgekit-agent", *VENV_PACKAGES}

    bundle = make_bundle()
    tampered = tmp_path / "tampered.ekb"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, bytes([data[0] ^ 1]) + data[1:] if info.filename == "manifest.sig" else data)
    run = subprocess.run([py, "-c", CHECK, str(bundle), str(keypair[1]), str(tampered)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    assert result["file"].startswith(str(venv))   # the installed copy, not the work tree
    assert {"edgekit_agent.bundle", "edgekit_agent.bundle.manifest", "edgekit_agent.runtime",
            "edgekit_agent.bundle.signing", "edgekit_agent.bundle.reader", "edgekit_agent.errors",
            "edgekit_agent.service.daemon", "edgekit_agent.validate"} <= set(result["modules"])
    assert result["heavy"] == []
    assert result["missing"] == ["edgekit", "onnx", "tensorflow", "ethosu"]
    host = open_bundle(bundle, keypair[1])
    assert result["key_id"] == host.key_id
    assert result["model_sha256"] == host.manifest.model.sha256
    assert result["model_len"] == host.manifest.model.size_bytes
    assert result["tampered"] == ("SignatureError: signature does not match: signed with another "
                                  f"key than {host.key_id}, or changed after signing")
