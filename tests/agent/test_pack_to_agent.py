"""The whole path: `edgekit pack` writes a signed bundle, the device store installs it (signature,
hashes, the packer's self-test vectors), and the Agent's answers match the bundle's evidence."""

from __future__ import annotations

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
