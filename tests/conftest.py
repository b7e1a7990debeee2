"""Shared fixtures: the built-in digits example, a signing key pair, a bundle factory, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bundle_writer import MemberFile, write_bundle
from edgekit.examples import get_example
from edgekit_agent.bundle.manifest import (Fidelity, Manifest, ModelRef, OutputFidelity, RecipeStep,
                                           TargetReport, TensorSpec, Variant, sha256_hex)
from edgekit_agent.bundle.signing import generate_keypair

REPO = Path(__file__).resolve().parents[1]
LABELS = "".join(f"{d}\n" for d in range(10)).encode()


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Conversions are cached by content hash; tests use their own cache (CLI subprocesses too)."""
    import os

    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits():
    return get_example("digits")


@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    """(private key path, public key path), made by the real keygen."""
    return generate_keypair(tmp_path_factory.mktemp("keys") / "signer")


def _digits_manifest(model: bytes, model_path: str = "model.tflite") -> Manifest:
    """A hand-built manifest for the float digits TFLite model with every contract field."""
    ref = ModelRef(path=model_path, format="tflite", sha256=sha256_hex(model),
                   size_bytes=len(model))
    primary = Variant(
        name="float", model=ref,
        inputs=(TensorSpec("image", (1, 8, 8, 1), "float32"),),
        outputs=(TensorSpec("logits", (1, 10), "float32"),),
        recipe=(RecipeStep("none"),),
        fidelity=Fidelity(outputs={"logits": OutputFidelity(sqnr_db=99.0, cosine=1.0)},
                          top1_agreement=1.0, samples=16, synthetic=False),
        latency_ms=0.05,
        target_report=TargetReport(family="cpu", flash_bytes=len(model), ops_on_cpu=("CONV_2D",)))
    return Manifest(name="digits", version="1", target="x86-64", family="cpu", primary=primary,
                    members=(), source={"format": "tflite", "size_bytes": len(model),
                                        "latency_ms": 0.05},
                    extras={"labels": "labels.txt"}, created="2024-01-01T00:00:00+00:00")


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory, digits, keypair):
    """make_bundle(sign=True, model=None) -> path of a fresh valid bundle (digits TFLite + labels)."""

    def make(sign: bool = True, model: bytes | None = None) -> Path:
        model = digits.tflite.read_bytes() if model is None else model
        files = [MemberFile("model.tflite", model, "model"), MemberFile("labels.txt", LABELS, "labels")]
        out = tmp_path_factory.mktemp("bundle") / "digits.ekb"
        return write_bundle(out, _digits_manifest(model), files, keypair[0] if sign else None)

    return make


def _run_edgekit(*args: str, cwd: Path | None = None, env: dict | None = None,
                 ) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (stdin closed), text output."""
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def _assert_cli_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, one `error: …` line on stderr naming every fragment, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture(scope="session")
def digits_manifest():
    return _digits_manifest


@pytest.fixture(scope="session")
def edgekit_cli():
    """edgekit_cli(*args, cwd=None, env=None) -> CompletedProcess of `python -m edgekit.cli`."""
    return _run_edgekit


@pytest.fixture(scope="session")
def cli_error():
    """cli_error(proc, *fragments): assert exit 1 and one `error:` line naming each fragment."""
    return _assert_cli_error
