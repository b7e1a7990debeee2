"""The whole path: `edgekit pack` writes a signed bundle, the device store installs it (signature,
hashes, the packer's self-test vectors), and the Agent's answers match the bundle's evidence."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgekit_agent.service.agent import Agent
from edgekit_agent.store.slots import BundleStore

pytestmark = pytest.mark.host  # packs with the host package


@pytest.mark.parametrize("target, kw", [("x86-64", {"recipe": "static_int8", "runtime": "onnxruntime"}),
                                        ("stm32h7", {})])
def test_packed_bundle_installs_and_reproduces_its_accuracy(tmp_path, digits, keypair, target, kw):
    out = tmp_path / f"{target}.ekb"
    import edgekit  # the host package: imported here so the agent-only runs can collect this module

    result = edgekit.pack("example:digits", target, out, sign_key=keypair[0], **kw)
    store = BundleStore(tmp_path / "store", public_key=keypair[1])
    installed = store.install(out)
    assert installed is not None
    images = np.load(digits.eval)["image"]
    labels = np.load(digits.labels)
    with Agent(store) as agent:
        assert agent.manifest.target == target
        name = agent.inputs[0].name
        logits = np.concatenate([next(iter(agent.infer({name: x[None]}).values())) for x in images])
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert accuracy == pytest.approx(result.manifest.primary.fidelity.accuracy, abs=0.002)
    assert accuracy >= 0.95


def test_ethos_u_bundle_installs_through_the_agent_cli_on_its_host_form(tmp_path, digits, keypair):
    """The shipped model is Vela's (its ethos-u op needs the NPU); `edgekit-agent install` runs
    the self-test vectors on the bundle's host form, the int8 network Vela compiled."""
    import edgekit

    out = tmp_path / "digits-u55.ekb"
    result = edgekit.pack("example:digits.tflite", "ethos-u55-128", out, sign_key=keypair[0])
    store = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-m", "edgekit_agent.cli", "install", str(out),
                           "--store", str(store), "--key", str(keypair[1]), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    installed = json.loads(proc.stdout)
    assert installed["signature_checked"] is True and installed["slot"] == "a"
    selftest = installed["selftest"]
    with np.load(_member(out, "selftest.npz")) as npz:
        atol = float(npz["atol"])
    assert selftest["kind"] == "vectors" and selftest["vectors"] == 4
    assert 0.0 <= selftest["max_abs_error"] <= atol
    fidelity = result.manifest.primary.fidelity
    assert fidelity.accuracy >= 0.95 and fidelity.accuracy_drop <= 0.01 and fidelity.min_sqnr_db > 10
    status = BundleStore(store).status().to_dict()
    assert status["active"]["bundle_id"] == installed["bundle_id"]


def _member(bundle, name):
    with zipfile.ZipFile(bundle) as zf:
        return io.BytesIO(zf.read(name))
